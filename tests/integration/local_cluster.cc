#include "tests/integration/local_cluster.h"

#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fcntl.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include <grpcpp/grpcpp.h>


namespace moemesh::testing {
namespace {

std::string ReadSmallFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The processes below `root` (children first found by scanning /proc), a line each: pid, state,
// kernel wait channel, threads and command line, so a cluster that is not ready shows where its
// processes are.
std::string DescribeProcessTree(pid_t root) {
  std::map<pid_t, std::vector<pid_t>> children;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    const std::string stat = ReadSmallFile("/proc/" + name + "/stat");
    const size_t close = stat.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(stat.substr(close + 2));
    char state = 0;
    pid_t ppid = 0;
    rest >> state >> ppid;
    children[ppid].push_back(std::stoi(name));
  }
  std::string out;
  std::vector<pid_t> todo = {root};
  while (!todo.empty()) {
    const pid_t pid = todo.back();
    todo.pop_back();
    const std::string dir = "/proc/" + std::to_string(pid);
    std::string cmd = ReadSmallFile(dir + "/cmdline");
    std::replace(cmd.begin(), cmd.end(), '\0', ' ');
    std::string state = "?", threads = "?";
    std::istringstream status(ReadSmallFile(dir + "/status"));
    for (std::string line; std::getline(status, line);) {
      if (line.rfind("State:", 0) == 0) state = line.substr(7);
      if (line.rfind("Threads:", 0) == 0) threads = line.substr(9);
    }
    out += "  pid " + std::to_string(pid) + " [" + state + ", wchan " +
           ReadSmallFile(dir + "/wchan") + ", " + threads + " threads] " + cmd + "\n";
    for (pid_t c : children[pid]) todo.push_back(c);
  }
  return out;
}

}  // namespace

std::string MoemeshBinary() {
  const char* env = std::getenv("MOEMESH_BINARY");
  return env != nullptr ? env : MOEMESH_BINARY_PATH;
}

std::unique_ptr<LocalCluster> LocalCluster::Serve(const std::string& model_dir, int tp, int experts,
                                                  const std::vector<std::string>& extra) {
  std::vector<std::string> args = {"serve", "--model=" + model_dir, "--tp=" + std::to_string(tp),
                                   "--expert_workers=" + std::to_string(experts), "--expert_threads=1",
                                   "--kv_blocks=256", "--block_size=4"};
  args.insert(args.end(), extra.begin(), extra.end());
  return Start(args);
}

std::unique_ptr<LocalCluster> LocalCluster::Start(const std::vector<std::string>& args) {
  auto c = std::unique_ptr<LocalCluster>(new LocalCluster());
  std::string pattern = (std::filesystem::temp_directory_path() / "moemesh_cluster_XXXXXX").string();
  c->dir_ = mkdtemp(pattern.data());
  std::vector<std::string> full = {MoemeshBinary()};
  full.insert(full.end(), args.begin(), args.end());
  full.push_back("--port_file=" + c->port_file());
  const std::string log = c->dir_ + "/log";
  const pid_t parent = getpid();
  c->pid_ = fork();
  if (c->pid_ < 0) {
    c->start_error_ = std::string("fork: ") + std::strerror(errno);
    return c;
  }
  if (c->pid_ == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);
    const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    std::vector<char*> argv;
    for (std::string& a : full) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  return c;
}

LocalCluster::~LocalCluster() {
  stub_.reset();  // close the client connection first: servers drain open connections on shutdown
  if (pid_ > 0) {
    kill(pid_, SIGTERM);
    if (WaitExit(std::chrono::seconds(15)) == -1) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

bool LocalCluster::WaitReady(std::chrono::seconds timeout, std::string* error) {
  if (pid_ < 0) {
    *error = "moemesh could not be started: " + start_error_;
    return false;
  }
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    std::ifstream in(port_file());
    int port = 0;
    if (in && (in >> port) && port > 0) {
      address_ = "127.0.0.1:" + std::to_string(port);
      stub_ = v1::Generation::NewStub(grpc::CreateChannel(address_, grpc::InsecureChannelCredentials()));
      return true;
    }
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      *error = "moemesh exited before it was ready:\n" + Log();
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  *error = "moemesh was not ready in time:\n" + Log() + "processes:\n" + DescribeProcessTree(pid_);
  return false;
}

int LocalCluster::WaitExit(std::chrono::seconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (pid_ > 0 && std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return -1;
}

std::string LocalCluster::Log() const {
  return ReadSmallFile(dir_ + "/log");
}

}  // namespace moemesh::testing
