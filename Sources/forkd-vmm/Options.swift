import Jail
import VMMCore

/// Command line of forkd-vmm. Parsed by hand: this process must start in a couple of
/// milliseconds, so it links nothing it does not need.
struct Options {
  enum Mode: String { case boot, restore }

  var mode: Mode
  var image: String?
  var kernel: String?
  var initrd: String?
  var commandLine: String?
  var disk: String?
  var commandLineDevices = false
  var snapshot: String?
  var backend = RestoreBackend.file
  var pagerSocket: String?
  var shmemImage: String?
  var pagerPolicy = PagerLink.Policy.fail
  /// 64 MiB for the test guest, 256 MiB for Linux (a Debian kernel decompresses into ~80 MiB).
  var memoryMiB: UInt64 = 64
  private var memoryGiven = false
  var vcpus: UInt32 = 1
  var guestCID: UInt32 = 3
  var controlSocket: String?
  var vsockSocket: String?
  var console = "-"
  var readyFD: Int32?
  var logLevel = "info"
  /// The NIC: a TAP opened by name (created if missing), an inherited TAP descriptor, or (boot
  /// only) a NIC with no backend; `netns` is entered before the TAP is opened.
  var tapName: String?
  var tapFD: Int32?
  var nic = false
  var netns: String?
  /// The jail entered once restored, before the guest runs (docs/jail.md); nil: unjailed.
  var jail: JailSpec?

  static let usage = """
    usage: forkd-vmm boot --image PATH|builtin:test-guest --api-sock PATH --vsock-sock PATH
                          [--memory-mib N] [--vcpus N] [--cid N] [--console PATH|-|none] [--ready-fd N]
           forkd-vmm boot --kernel PATH [--initrd PATH] [--cmdline STRING] [--disk PATH]
                          [--virtio-cmdline-devices] --api-sock PATH --vsock-sock PATH
                          [--memory-mib N (default 256)] [--vcpus N] [--cid N] [--console PATH|-|none] [--ready-fd N]
           forkd-vmm restore --snapshot DIR --api-sock PATH --vsock-sock PATH [--disk PATH]
                          [--backend file|uffd|shmem --pager-sock PATH [--pager-policy fail|restart]
                           [--shmem-image PATH]]
                          [--console PATH|-|none] [--ready-fd N] [--jail UID:GID [--jail-cell DIR] [--jail-bind DIR:NAME]]
           NIC (boot and restore): [--netns PATH] --tap NAME | --tap-fd N;  boot only: --nic (no backend)
    --jail: once restored, lock this process into its working directory (--jail-cell: change into
    DIR first; a private mount namespace rooted there) as UID:GID with no capabilities; --jail-bind mounts DIR on NAME in it.
    --kernel boots Linux (bzImage or ELF vmlinux, told apart by content) with ACPI-described
    virtio-mmio devices; the default command line is "\(LinuxBootSource.defaultCommandLine)".
    --disk is a read-only base image; the guest's writes stay in this VM (and its snapshots).
    One microVM per process, driven over its control socket (--api-sock): newline-delimited JSON
    requests {"op":"status"|"pause"|"resume"|"snapshot","dir":…|"stop"|"attach_pager","socket":…}.
    """

  struct UsageError: Error, CustomStringConvertible {
    let description: String
  }

  init(_ arguments: [String]) throws(UsageError) {
    guard let first = arguments.first, let mode = Mode(rawValue: first) else {
      throw UsageError(
        description: "expected a command, boot or restore, got \(arguments.first.map { "'\($0)'" } ?? "nothing")")
    }
    self.mode = mode
    var rest = arguments.dropFirst()
    func value(_ flag: String) throws(UsageError) -> String {
      guard let v = rest.popFirst() else { throw UsageError(description: "\(flag) needs a value") }
      return v
    }
    func number<T: FixedWidthInteger>(_ flag: String, _: T.Type) throws(UsageError) -> T {
      let text = try value(flag)
      guard let n = T(text) else { throw UsageError(description: "\(flag): '\(text)' is not a valid number") }
      return n
    }
    while let flag = rest.popFirst() {
      switch flag {
      case "--image": image = try value(flag)
      case "--kernel": kernel = try value(flag)
      case "--initrd": initrd = try value(flag)
      case "--cmdline": commandLine = try value(flag)
      case "--disk": disk = try value(flag)
      case "--virtio-cmdline-devices": commandLineDevices = true
      case "--snapshot": snapshot = try value(flag)
      case "--backend":
        let name = try value(flag)
        guard let parsed = RestoreBackend(rawValue: name) else {
          throw UsageError(description: "--backend '\(name)': expected file, uffd or shmem")
        }
        backend = parsed
      case "--pager-sock": pagerSocket = try value(flag)
      case "--shmem-image": shmemImage = try value(flag)
      case "--pager-policy":
        let name = try value(flag)
        guard let parsed = PagerLink.Policy(rawValue: name) else {
          throw UsageError(description: "--pager-policy '\(name)': expected restart or fail")
        }
        pagerPolicy = parsed
      case "--memory-mib":
        memoryMiB = try number(flag, UInt64.self)
        memoryGiven = true
      case "--vcpus": vcpus = try number(flag, UInt32.self)
      case "--cid": guestCID = try number(flag, UInt32.self)
      case "--api-sock": controlSocket = try value(flag)
      case "--vsock-sock": vsockSocket = try value(flag)
      case "--console": console = try value(flag)
      case "--ready-fd": readyFD = try number(flag, Int32.self)
      case "--log-level": logLevel = try value(flag)
      case "--tap":
        let name = try value(flag)
        guard !name.isEmpty, name.utf8.count < 16, !name.contains("/") else {
          throw UsageError(description: "--tap '\(name)': an interface name is 1 to 15 bytes without '/'")
        }
        tapName = name
      case "--tap-fd":
        let fd = try number(flag, Int32.self)
        guard fd > 2 else { throw UsageError(description: "--tap-fd \(fd): expected an inherited descriptor above 2") }
        tapFD = fd
      case "--nic": nic = true
      case "--netns": netns = try value(flag)
      case "--jail":
        switch JailSpec.parse(try value(flag)) {
        case .success(let spec): jail = JailSpec(uid: spec.uid, gid: spec.gid, bind: jail?.bind, cell: jail?.cell)
        case .failure(let error): throw UsageError(description: error.message)
        }
      case "--jail-cell":
        var spec = jail ?? JailSpec(uid: 0, gid: 0)
        spec.cell = try value(flag)
        jail = spec
      case "--jail-bind":
        var spec = jail ?? JailSpec(uid: 0, gid: 0)
        if let error = spec.parseBind(try value(flag)) { throw UsageError(description: error.message) }
        jail = spec
      default: throw UsageError(description: "unknown option '\(flag)'")
      }
    }
    if let jail, jail.uid == 0 { throw UsageError(description: "--jail-bind and --jail-cell need --jail UID:GID") }
    if jail != nil && mode != .restore {
      throw UsageError(description: "--jail is for restore (a boot writes its snapshot outside any cell)")
    }
    guard controlSocket != nil else { throw UsageError(description: "--api-sock is required") }
    guard vsockSocket != nil else { throw UsageError(description: "--vsock-sock is required") }
    if tapName != nil && tapFD != nil { throw UsageError(description: "--tap and --tap-fd exclude each other") }
    if netns != nil && tapName == nil {
      throw UsageError(description: "--netns is where --tap NAME is opened; it needs --tap")
    }
    if mode == .restore && nic {
      throw UsageError(description: "--nic is for boot: a restored VM has a NIC when its snapshot has one")
    }
    switch mode {
    case .boot:
      guard (image != nil) != (kernel != nil) else {
        throw UsageError(description: "boot needs exactly one of --image (test guest) or --kernel (Linux)")
      }
      if kernel == nil, initrd != nil || commandLine != nil || disk != nil || commandLineDevices {
        throw UsageError(description: "--initrd, --cmdline, --disk and --virtio-cmdline-devices need --kernel")
      }
      if kernel != nil && !memoryGiven { memoryMiB = 256 }
      guard (1...64).contains(vcpus) else { throw UsageError(description: "--vcpus \(vcpus): must be 1...64") }
      guard guestCID >= 3 else { throw UsageError(description: "--cid \(guestCID): guest CIDs start at 3") }
    case .restore:
      guard snapshot != nil else { throw UsageError(description: "restore needs --snapshot") }
      if backend != .file && pagerSocket == nil {
        throw UsageError(
          description: "--backend \(backend.rawValue) needs --pager-sock (the child's forkd-pager socket)")
      }
      if backend == .shmem && shmemImage == nil {
        throw UsageError(description: "--backend shmem needs --shmem-image (the snapshot's memory in tmpfs)")
      }
    }
  }
}
