import Jail

/// Command line of forkd-pager (parsed by hand: the pager starts once per child).
struct Options {
  var socket: String
  var readyFD: Int32?
  var recordPath: String?
  var prefetchPath: String?
  var handshakeTimeoutMS: Int32 = 5000
  /// Experimental daemon-wide mode: one process serves every VM that connects to the socket.
  var shared = false
  /// The jail entered after the handshake, before the first fault is served (docs/jail.md).
  var jail: JailSpec?

  static let usage = """
    usage: forkd-pager --socket PATH [--ready-fd N] [--handshake-timeout-ms N]
                       [--record-working-set PATH] [--prefetch PATH] [--shared] [--jail UID:GID [--jail-cell DIR]]
    Serves one child's guest memory through the userfaultfd its VM sends over PATH (SCM_RIGHTS).
    Further connections on PATH may send {"op":"stats"} or {"op":"save_working_set"} lines.
    --shared (experimental): keep accepting VMs on PATH and serve all of them from one event
    loop and one mapping of the first VM's snapshot (the others must name the same layers);
    runs until signalled.
    --jail: after the handshake, lock this process into its working directory (a private mount
    namespace rooted there) as UID:GID with no capabilities; the socket is handed to UID first.
    """

  struct UsageError: Error, CustomStringConvertible { let description: String }

  init(_ arguments: [String]) throws(UsageError) {
    var rest = arguments[...]
    var socket: String?
    func value(_ flag: String) throws(UsageError) -> String {
      guard let v = rest.popFirst() else { throw UsageError(description: "\(flag) needs a value") }
      return v
    }
    while let flag = rest.popFirst() {
      switch flag {
      case "--socket": socket = try value(flag)
      case "--ready-fd":
        let text = try value(flag)
        guard let fd = Int32(text) else { throw UsageError(description: "--ready-fd '\(text)' is not a number") }
        readyFD = fd
      case "--record-working-set": recordPath = try value(flag)
      case "--prefetch": prefetchPath = try value(flag)
      case "--shared": shared = true
      case "--jail-cell":
        var spec = jail ?? JailSpec(uid: 0, gid: 0)
        spec.cell = try value(flag)
        jail = spec
      case "--jail":
        switch JailSpec.parse(try value(flag)) {
        case .success(let spec): jail = JailSpec(uid: spec.uid, gid: spec.gid, cell: jail?.cell)
        case .failure(let error): throw UsageError(description: error.message)
        }
      case "--handshake-timeout-ms":
        let text = try value(flag)
        guard let ms = Int32(text), ms > 0 else {
          throw UsageError(description: "--handshake-timeout-ms '\(text)' is not a positive number")
        }
        handshakeTimeoutMS = ms
      default: throw UsageError(description: "unknown option '\(flag)'")
      }
    }
    guard let socket else { throw UsageError(description: "--socket is required") }
    if shared && recordPath != nil {
      throw UsageError(description: "--record-working-set records one VM's faults; it cannot be used with --shared")
    }
    if let jail, jail.uid == 0 { throw UsageError(description: "--jail-cell needs --jail UID:GID") }
    if shared && jail != nil {
      throw UsageError(description: "--jail cannot be used with --shared (its VMs' sockets lie outside any one cell)")
    }
    self.socket = socket
  }
}
