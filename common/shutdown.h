// Orderly shutdown on SIGINT/SIGTERM for server processes: BlockTerminationSignals() first
// thing in main (before any thread starts, so every thread inherits the mask), then one thread
// waits for the signal with ShutdownSignal::Wait. Thread-safe.
#pragma once

namespace moemesh {

// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (and the threads it starts later).
void BlockTerminationSignals();

class ShutdownSignal {
 public:
  ShutdownSignal();  // blocks the signals in this thread too
  // Waits for SIGINT, SIGTERM or SIGHUP and returns its number.
  int Wait();
};

}  // namespace moemesh
