#include "cli/serve_command.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "common/shutdown.h"
#include "moemesh/v1/generate.grpc.pb.h"

namespace moemesh {
namespace {

struct Child {
  std::string name;
  pid_t pid = -1;
};

// fork + exec of this executable; the child dies with its parent. -1 with errno when fork fails
// (EAGAIN, the process or thread limit, is retried for a few seconds first).
pid_t Spawn(const std::vector<std::string>& args) {
  const pid_t parent = getpid();
  pid_t pid = fork();
  for (int retry = 0; pid < 0 && errno == EAGAIN && retry < 50; ++retry) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    pid = fork();
  }
  if (pid != 0) return pid;
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (getppid() != parent) _exit(1);
  sigset_t none;
  sigemptyset(&none);
  pthread_sigmask(SIG_SETMASK, &none, nullptr);
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  execv("/proc/self/exe", argv.data());
  std::perror("moemesh serve: exec");
  _exit(127);
}

class Cluster {
 public:
  ~Cluster() { StopAll(); }

  // False (after saying why) when the process could not be created.
  bool Start(std::string name, std::vector<std::string> args) {
    args.insert(args.begin(), "moemesh");
    const pid_t pid = Spawn(args);
    if (pid < 0) {
      std::fprintf(stderr, "moemesh serve: cannot start the %s: fork: %s\n", name.c_str(),
                   std::strerror(errno));
      return false;
    }
    children_.push_back({std::move(name), pid});
    return true;
  }

  // The first child that exited, if any (reaped).
  const Child* Exited() {
    for (Child& c : children_) {
      if (c.pid <= 0) continue;
      int status = 0;
      if (waitpid(c.pid, &status, WNOHANG) == c.pid) {
        std::fprintf(stderr, "moemesh serve: %s (pid %d) exited (%s %d)\n", c.name.c_str(), c.pid,
                     WIFEXITED(status) ? "status" : "signal",
                     WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
        c.pid = -1;
        return &c;
      }
    }
    return nullptr;
  }

  void StopAll() {
    for (Child& c : children_) {
      if (c.pid > 0) kill(c.pid, SIGTERM);
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    for (Child& c : children_) {
      while (c.pid > 0) {
        if (waitpid(c.pid, nullptr, WNOHANG) == c.pid) {
          c.pid = -1;
        } else if (std::chrono::steady_clock::now() > deadline) {
          kill(c.pid, SIGKILL);
          waitpid(c.pid, nullptr, 0);
          c.pid = -1;
        } else {
          std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
      }
    }
  }

 private:
  std::vector<Child> children_;
};

// Waits for a signal or a child's exit, up to `timeout`; returns the signal (0 if none).
int WaitSignal(std::chrono::milliseconds timeout) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  timespec ts{0, static_cast<long>(timeout.count()) * 1000000L};
  const int s = sigtimedwait(&set, nullptr, &ts);
  return s > 0 ? s : 0;
}

}  // namespace

int ServeCommand(const ServeConfig& cfg) {
  BlockTerminationSignals();
  // A fresh directory of its own (mkdtemp), never one a killed serve of the same pid left
  // behind: its coordinator.port would send the workers to that serve's old port.
  std::string tmp_template =
      (std::filesystem::temp_directory_path() / "moemesh-serve-XXXXXX").string();
  if (mkdtemp(tmp_template.data()) == nullptr) {
    std::fprintf(stderr, "moemesh serve: cannot create a directory %s: %s\n",
                 tmp_template.c_str(), std::strerror(errno));
    return 1;
  }
  const std::filesystem::path tmp = tmp_template;
  struct RemoveDir {
    std::filesystem::path path;
    ~RemoveDir() {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
    }
  } remove_tmp{tmp};
  const std::string coordinator_port_file = (tmp / "coordinator.port").string();
  Cluster cluster;
  std::vector<std::string> args = {"coordinator",
                                   "--model=" + cfg.model_dir,
                                   absl::StrCat("--listen=", cfg.host, ":", cfg.port),
                                   "--port_file=" + coordinator_port_file,
                                   absl::StrCat("--tp=", cfg.tp_size),
                                   absl::StrCat("--expert_workers=", cfg.expert_workers),
                                   absl::StrCat("--expert_replicas=", cfg.expert_replicas),
                                   absl::StrCat("--expert_threads=", cfg.expert_threads),
                                   "--expert_format=" + cfg.expert_format};
  args.insert(args.end(), cfg.coordinator_flags.begin(), cfg.coordinator_flags.end());
  if (!cluster.Start("coordinator", args)) return 1;

  int port = 0;
  const auto start = std::chrono::steady_clock::now();
  while (port == 0) {
    if (cluster.Exited() != nullptr) return 1;
    if (WaitSignal(std::chrono::milliseconds(20)) != 0) return 0;
    std::ifstream in(coordinator_port_file);
    if (in) in >> port;
    if (std::chrono::steady_clock::now() - start > std::chrono::seconds(60)) {
      std::fprintf(stderr, "moemesh serve: the coordinator did not start listening within 60 s\n");
      return 1;
    }
  }
  const std::string coordinator = absl::StrCat(cfg.host, ":", port);
  for (int r = 0; r < cfg.tp_size; ++r) {
    const bool started = cluster.Start(absl::StrCat("attention worker ", r),
                  {"attention-worker", "--coordinator=" + coordinator, absl::StrCat("--listen=", cfg.host, ":0"),
                   absl::StrCat("--name=attention-", r),
                   "--gpu=" + (cfg.gpus.empty() ? std::string("-1") : cfg.gpus[r]),
                   absl::StrCat("--cuda_graphs=", cfg.cuda_graphs ? "true" : "false")});
    if (!started) return 1;
  }
  for (int e = 0; e < cfg.expert_workers; ++e) {
    const bool started = cluster.Start(absl::StrCat("expert worker ", e),
                  {"expert-worker", "--coordinator=" + coordinator, absl::StrCat("--listen=", cfg.host, ":0"),
                   absl::StrCat("--name=expert-", e), absl::StrCat("--threads=", cfg.expert_threads),
                   absl::StrCat("--memory_limit=", cfg.expert_memory_limit),
                   absl::StrCat("--amx_threshold=", cfg.expert_amx_threshold)});
    if (!started) return 1;
  }

  // Ready when the coordinator says so; every 10 s until then, what it is waiting for.
  auto stub = v1::Generation::NewStub(grpc::CreateChannel(coordinator, grpc::InsecureChannelCredentials()));
  bool ready = false;
  auto next_report = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!ready) {
    if (cluster.Exited() != nullptr) return 1;
    if (WaitSignal(std::chrono::milliseconds(50)) != 0) return 0;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
    v1::ModelInfoResponse info;
    const grpc::Status s = stub->ModelInfo(&ctx, v1::ModelInfoRequest(), &info);
    if (s.ok()) ready = info.ready();
    if (!ready && std::chrono::steady_clock::now() >= next_report) {
      const auto waited = std::chrono::duration_cast<std::chrono::seconds>(
          std::chrono::steady_clock::now() - start);
      std::fprintf(stderr, "moemesh serve: not ready after %lld s: %s\n",
                   static_cast<long long>(waited.count()),
                   s.ok() ? info.placement_summary().c_str()
                          : ("the coordinator does not answer: " + s.error_message()).c_str());
      next_report += std::chrono::seconds(10);
    }
  }
  std::fprintf(stderr, "moemesh serve: ready on %s (TP %d, %d expert workers, experts in %s)\n",
               coordinator.c_str(), cfg.tp_size, cfg.expert_workers, cfg.expert_format.c_str());
  if (!cfg.port_file.empty()) {
    std::ofstream(cfg.port_file + ".tmp") << port << "\n";
    std::filesystem::rename(cfg.port_file + ".tmp", cfg.port_file);
  }
  while (true) {
    if (const Child* c = cluster.Exited()) {
      std::fprintf(stderr, "moemesh serve: stopping the cluster because %s exited\n", c->name.c_str());
      return 1;
    }
    if (const int s = WaitSignal(std::chrono::milliseconds(200)); s != 0) {
      std::fprintf(stderr, "moemesh serve: signal %d, stopping the cluster\n", s);
      return 0;
    }
  }
}

}  // namespace moemesh
