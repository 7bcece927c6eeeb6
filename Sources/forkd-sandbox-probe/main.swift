// forkd-sandbox-probe: proves a role's seccomp policy in a throw-away process.
//
//   forkd-sandbox-probe <pager|vmm> <action> [kill|errno|log]
//
// Installs the role's policy (default action: kill-process: the very BPF program the shipped
// binaries embed, see SeccompFilters), prints the
// "Seccomp:" line of /proc/self/status, then performs <action>:
//   allowed       a few allowed calls (getpid, clock_gettime, write, mmap/munmap, malloc, one allowed
//                 ioctl request); exits 0
//   socket        socket(AF_INET)              forbidden for every role
//   unix-socket   socket(AF_UNIX)              forbidden for the pager, allowed for the vmm
//   openat        openat("/proc/self/status")  forbidden for the pager, allowed for the vmm
//   execve        execve("/bin/true")
//   fork          fork() (clone)
//   ioctl         ioctl(1, TIOCGWINSZ): a request outside the allow-list
//   thread-socket socket(AF_INET) from a second thread started before the filter (TSYNC)
//   list          installs nothing: prints the policy (syscall NAME / ioctl 0xREQUEST / rule …)
// Under the kill-process action a forbidden call ends the process with SIGSYS; the probe exits 0
// only if the call succeeded, 1 if it failed with an errno (the errno action), 2 on a usage error
// and 3 if the policy could not be installed. Output goes straight to write(2): no stdio buffer to
// lose at SIGSYS and no isatty ioctl.
import Sandbox
import SeccompFilters
import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// One line on stdout through write(2).
func say(_ text: String) {
  let bytes = Array((text + "\n").utf8)
  var offset = 0
  while offset < bytes.count {
    let n = bytes.withUnsafeBytes { write(1, $0.baseAddress! + offset, $0.count - offset) }
    if n < 0 && errno == EINTR { continue }
    guard n > 0 else { return }
    offset += n
  }
}

func fail(_ status: Int32, _ text: String) -> Never {
  say(text)
  exit(status)
}

/// The outcome of a call that should not have been possible: success exits 0, an errno exits 1.
func report(_ call: String, _ rc: Int) -> Never {
  if rc >= 0 { fail(0, "UNEXPECTED: \(call) succeeded (\(rc))") }
  fail(1, "\(call) failed: \(Errno.current)")
}

let usage =
  "usage: forkd-sandbox-probe <pager|pager-jailed|vmm> "
  + "<allowed|socket|unix-socket|openat|execve|fork|ioctl|thread-socket|list> [kill|errno|log]"
let arguments = Array(CommandLine.arguments.dropFirst())
guard arguments.count == 2 || arguments.count == 3 else { fail(2, usage) }

var policy: SeccompPolicy
switch arguments[0] {
case "pager": policy = .pager
case "vmm": policy = .vmm
case "pager-jailed": policy = .pagerJailed
default: fail(2, "unknown policy \(arguments[0])\n\(usage)")
}
if arguments.count == 3 {
  switch arguments[2] {
  case "kill": policy.defaultAction = .killProcess
  case "errno": policy.defaultAction = .errno(EPERM)
  case "log": policy.defaultAction = .log
  default: fail(2, "unknown default action \(arguments[2])\n\(usage)")
  }
}
let action = arguments[1]
let actions = ["allowed", "socket", "unix-socket", "openat", "execve", "fork", "ioctl", "thread-socket", "list"]
guard actions.contains(action) else { fail(2, "unknown action \(action)\n\(usage)") }

if action == "list" {
  say("policy \(policy.name) default \(policy.defaultAction)")
  for name in policy.allowedSyscalls { say("syscall \(name)") }
  for request in policy.allowedIoctls { say("ioctl \(hex(request))") }
  for rule in policy.argumentRules { say("rule \(rule)") }
  exit(0)
}

// Setup phase: everything the probe needs after the filter is opened or started now.
var noCore = rlimit(rlim_cur: 0, rlim_max: 0)
_ = setrlimit(__rlimit_resource_t(RLIMIT_CORE.rawValue), &noCore)  // a SIGSYS death dumps core otherwise
let status = open("/proc/self/status", O_RDONLY | O_CLOEXEC)
guard status >= 0 else { fail(3, "cannot open /proc/self/status: \(Errno.current)") }

var threadGo: FileDescriptor?
var thread: OSThread?
if action == "thread-socket" {
  do {
    let (readEnd, writeEnd) = try FileDescriptor.pipe()
    let (readyRead, readyWrite) = try FileDescriptor.pipe()
    threadGo = writeEnd
    thread = try OSThread.start(name: "probe-socket") {
      var byte: UInt8 = 1
      _ = write(readyWrite.rawValue, &byte, 1)  // running: past glibc's thread start-up
      _ = read(readEnd.rawValue, &byte, 1)  // blocks until the filter is in place
      say("calling socket(AF_INET, SOCK_STREAM) from a second thread")
      report("socket(AF_INET) in a second thread", Int(socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)))
    }
    var byte: UInt8 = 0
    _ = read(readyRead.rawValue, &byte, 1)
  } catch {
    fail(3, "cannot start the second thread: \(error)")
  }
}

// The default (kill) action loads exactly the program the shipped forkd-vmm / forkd-pager embed;
// the errno/log variants are compiled from the policy with libseccomp here.
do {
  if arguments.count == 3 && arguments[2] != "kill" {
    try Sandbox.install(policy)
  } else {
    let compiled: [String: CompiledFilter] = [
      "pager": .pager, "vmm": .vmm, "pager-jailed": .pagerJailed,
    ]
    try compiled[policy.name, default: .vmm].install()
  }
} catch {
  fail(3, "forkd-sandbox-probe: \(error)")
}

// /proc/self/status is generated at read time: it shows the filter now in force.
var buffer = [UInt8](repeating: 0, count: 8192)
let count = buffer.withUnsafeMutableBytes { read(status, $0.baseAddress, $0.count) }
let text = count > 0 ? String(decoding: buffer[..<count], as: UTF8.self) : ""
guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("Seccomp:") }) else {
  fail(1, "no Seccomp: line in /proc/self/status")
}
say(String(line))
say("policy \(policy.name), default action \(policy.defaultAction), action \(action)")

switch action {
case "allowed":
  let pid = getpid()
  var ts = timespec()
  _ = clock_gettime(CLOCK_MONOTONIC, &ts)  // usually the vDSO
  _ = clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)  // a real system call
  let size = 1 << 20
  guard let map = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), map != MAP_FAILED
  else { fail(1, "mmap failed: \(Errno.current)") }
  map.storeBytes(of: 0x5A, as: UInt8.self)
  guard munmap(map, size) == 0 else { fail(1, "munmap failed: \(Errno.current)") }
  var big = [UInt64](repeating: 7, count: 1 << 16)  // 512 KiB: malloc takes it from mmap
  big[big.count - 1] = 8
  let sum = big.reduce(0, &+)
  // An allowed request on a descriptor that does not support it: the filter lets it through and the
  // kernel answers ENOTTY (or similar); a denied request would have killed the process.
  let request = policy.allowedIoctls.first ?? 0
  let rc = ioctl(1, request)
  let ioctlResult = rc < 0 ? "\(Errno.current.name)" : "\(rc)"
  say(
    "allowed calls done: pid \(pid), clock \(ts.tv_sec)s, mmap/munmap 1 MiB, malloc sum \(sum), "
      + "ioctl \(hex(request)) → \(ioctlResult)"
  )
  exit(0)
case "socket":
  say("calling socket(AF_INET, SOCK_STREAM)")
  report("socket(AF_INET)", Int(socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)))
case "unix-socket":
  say("calling socket(AF_UNIX, SOCK_STREAM)")
  report("socket(AF_UNIX)", Int(socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)))
case "openat":
  say("calling openat(/proc/self/status)")
  report("openat", Int(open("/proc/self/status", O_RDONLY | O_CLOEXEC)))
case "execve":
  say("calling execve(/bin/true)")
  let argv: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/true"), nil]
  let envp: [UnsafeMutablePointer<CChar>?] = [nil]
  report("execve", Int(execve("/bin/true", argv, envp)))
case "fork":
  say("calling fork()")
  let pid = fork()
  if pid == 0 { _exit(0) }
  report("fork", Int(pid))
case "ioctl":
  say("calling ioctl(1, TIOCGWINSZ)")
  var size = winsize()
  report("ioctl(TIOCGWINSZ)", Int(ioctl(1, UInt(TIOCGWINSZ), &size)))
case "thread-socket":
  _ = try? threadGo?.writeAll([1])
  thread?.join()  // the thread exits the process (or SIGSYS ends it)
  fail(1, "the second thread returned without a verdict")
default:
  fail(2, usage)
}

func hex(_ value: UInt) -> String { "0x" + String(value, radix: 16) }
