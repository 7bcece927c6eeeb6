// forkd-pager: arrives with its own issue (see `issues`). Until then it refuses to run rather than
// pretend: nothing in the project starts it yet.
#if canImport(Glibc)
  import Glibc
#endif

let message = "forkd-pager: not implemented yet in this build; forkd-vmm runs VMs with the file backend\n"
_ = message.withCString { write(2, $0, strlen($0)) }
exit(2)
