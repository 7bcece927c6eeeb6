// swift-tools-version:6.0
// forkd: a microVM fork runtime for Linux/KVM.
import PackageDescription

/// Per-child processes (forkd-vmm, forkd-pager) start once per child: link them fully static
/// (Swift runtime, libstdc++ and glibc) so exec runs no dynamic loader at all. Spawn + exit of
/// forkd-pager on this host: 6.5 ms with -static-stdlib (ld.so still loads libc, libstdc++,
/// libm), 2.1 ms fully static.
/// Sanitizer runtimes (ASan, TSan) cannot be linked into a static executable: scripts/sanitize
/// sets FORKD_DYNAMIC_PER_CHILD=1 to link the per-child binaries dynamically for those runs.
let perChildLinking: [LinkerSetting] =
  Context.environment["FORKD_DYNAMIC_PER_CHILD"] == nil ? [.unsafeFlags(["-static-executable"])] : []

/// Test seams (KillPoint, FaultInjection, FORKD_TEST_* delays) exist only in debug builds, which is
/// what `swift test` runs; release binaries carry none of them (swift-system's ENABLE_MOCKING idea).
let testSeams: [SwiftSetting] = [.define("FORKD_TEST_SEAMS", .when(configuration: .debug))]

let package = Package(
  name: "forkd",
  platforms: [.macOS(.v15)],
  products: [
    .executable(name: "forkd", targets: ["forkd"]),
    .executable(name: "forkd-bench", targets: ["forkd-bench"]),
    .executable(name: "forkd-vmm", targets: ["forkd-vmm"]),
    .executable(name: "forkd-pager", targets: ["forkd-pager"]),
    .executable(name: "forkd-supervisor", targets: ["forkd-supervisor"]),
    .library(name: "VMMCore", targets: ["VMMCore"]),
    .library(name: "Protocol", targets: ["Protocol"]),
  ],
  dependencies: [
    .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
    .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
    .package(url: "https://github.com/apple/swift-metrics", from: "2.5.0"),
    .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.1.0"),
  ],
  targets: [
    // C shims, one concern each.
    .target(name: "CKVM"),
    .target(name: "CUffd"),
    // Namespaces and credentials of the per-child jail (docs/jail.md).
    .target(name: "CJail"),
    // libseccomp behind non-variadic calls (build hosts need libseccomp-dev).
    .target(name: "CSeccomp", linkerSettings: [.linkedLibrary("seccomp")]),

    // Thin syscall wrappers: EINTR retry, typed errno, fault-injection seam.
    .target(name: "Syscalls", dependencies: ["CUffd"], swiftSettings: testSeams),

    // Every wire and file format: agent, vmm control, snapshot manifest and state.
    // Hashing and parsing run on every snapshot and request: optimized even in debug builds.
    .target(name: "Protocol", swiftSettings: [.unsafeFlags(["-O"])]),

    // The per-child jail: private mount namespace rooted at the run directory, own uid, no caps.
    .target(name: "Jail", dependencies: ["CJail", "Syscalls"]),

    // Snapshots on disk: diff chains, layer digests, compaction (no KVM).
    .target(name: "SnapshotStorage", dependencies: ["Syscalls", "Protocol", "CSharedBytes"]),
    // Acquire/release loads and stores of bytes shared through a mapped file (lazy.map).
    .target(name: "CSharedBytes"),

    // Snapshots as OCI artifacts: the layout (config, layers, content-addressed memory chunks),
    // push and pull of diff chains over any blob store (docs/snapshot-format.md).
    .target(
      name: "SnapshotPack", dependencies: ["Protocol", "Syscalls", "SnapshotStorage", "CSHA256", "OCIDistribution"]),
    // SHA-256 of memory chunks through libcrypto (build hosts need libssl-dev).
    .target(name: "CSHA256", linkerSettings: [.linkedLibrary("crypto")]),

    // A client of the OCI distribution API (registries): references, auth challenges, blobs and
    // manifests. HTTP through FoundationNetworking (libcurl: HTTPS with the system trust store),
    // which ships with the toolchain and adds no package to build.
    .target(name: "OCIDistribution", dependencies: ["Protocol"]),

    // The KVM microVM monitor as a library.
    .target(
      name: "VMMCore",
      dependencies: [
        "CKVM", "Syscalls", "Protocol", "SnapshotStorage", .product(name: "Logging", package: "swift-log"),
      ]
    ),

    // The project-owned test guest (freestanding C built by clang/lld), embedded as bytes.
    .plugin(name: "GuestBuildPlugin", capability: .buildTool()),
    .target(name: "TestGuestImage", plugins: ["GuestBuildPlugin"]),

    // Launching forkd-vmm processes and talking to them (control socket, agent over vsock).
    .target(name: "VMMControl", dependencies: ["Syscalls", "Protocol", "Jail"]),

    .executableTarget(
      name: "forkd-vmm",
      dependencies: [
        "VMMCore", "SnapshotStorage", "TestGuestImage", "SeccompFilters", "Jail", "CJail",
        .product(name: "Logging", package: "swift-log"),
      ],
      swiftSettings: testSeams,
      linkerSettings: perChildLinking
    ),
    .executableTarget(
      name: "forkd-pager", dependencies: ["Syscalls", "Protocol", "SnapshotStorage", "SeccompFilters", "Jail"],
      linkerSettings: perChildLinking),
    // Build-time compilation of the role policies to BPF, embedded for the per-child processes.
    .target(name: "CSeccompLoad"),
    .executableTarget(name: "forkd-seccomp-compile", dependencies: ["Sandbox", "Syscalls"]),
    .plugin(name: "SeccompFilterPlugin", capability: .buildTool(), dependencies: ["forkd-seccomp-compile"]),
    .target(name: "SeccompFilters", dependencies: ["CSeccompLoad"], plugins: ["SeccompFilterPlugin"]),

    // Per-role seccomp allow-lists for the per-child processes (no Foundation), and their probe.
    .target(name: "Sandbox", dependencies: ["CSeccomp", "Syscalls"]),
    .executableTarget(
      name: "forkd-sandbox-probe", dependencies: ["Sandbox", "SeccompFilters", "Syscalls", "Jail"],
      linkerSettings: perChildLinking),
    // systemd integration for forkd-supervisor: socket activation, sd_notify, journald
    // (build hosts need libsystemd-dev), and a probe of it for tests and host checks.
    .target(name: "CSystemd", linkerSettings: [.linkedLibrary("systemd")]),
    .target(
      name: "SystemdSupport",
      dependencies: ["CSystemd", "Syscalls", .product(name: "Logging", package: "swift-log")]),
    .executableTarget(
      name: "forkd-systemd-probe",
      dependencies: ["SystemdSupport", "Syscalls", .product(name: "Logging", package: "swift-log")]),
    // A minimal HTTP/1.1 server on SwiftNIO: Unix, TCP and socket-activated listeners.
    .target(
      name: "ForkdHTTP",
      dependencies: [
        "Syscalls", .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio"),
        .product(name: "NIOHTTP1", package: "swift-nio"),
      ], swiftSettings: testSeams),
    // The client side of the v1 API (CLI, tests).
    .target(name: "ForkdClient", dependencies: ["Protocol", "Syscalls"]),
    // The daemon's logic: snapshot registry, sandboxes, the v1 API, metrics, audit log.
    .target(
      name: "SupervisorCore",
      dependencies: [
        "VMMControl", "Protocol", "Syscalls", "SnapshotStorage", "ForkdHTTP", "SystemdSupport", "SnapshotPack",
        "OCIDistribution", .product(name: "Logging", package: "swift-log"),
        .product(name: "NIOPosix", package: "swift-nio"),
        .product(name: "Metrics", package: "swift-metrics"), .product(name: "Prometheus", package: "swift-prometheus"),
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ], swiftSettings: testSeams),
    .executableTarget(
      name: "forkd-supervisor",
      dependencies: [
        "SupervisorCore", "ForkdHTTP", .product(name: "ArgumentParser", package: "swift-argument-parser"),
        .product(name: "Logging", package: "swift-log"),
      ]),
    // What the CLI and the benches share: a supervisor started for one run, scratch directories,
    // percentiles, /proc readers.
    .target(
      name: "CLISupport",
      dependencies: [
        "VMMControl", "Protocol", "Syscalls", "ForkdClient",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ]),
    .executableTarget(
      name: "forkd",
      dependencies: [
        "CLISupport", "VMMControl", "VMMCore", "Protocol", "TestGuestImage", "ForkdClient", "SystemdSupport",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ]
    ),
    // The benchmarks (`forkd-bench restore|backends|spawn|branch|load|pagers`; `forkd bench …` runs it).
    .executableTarget(
      name: "forkd-bench",
      dependencies: [
        "CLISupport", "VMMControl", "VMMCore", "Protocol", "Syscalls", "ForkdClient", "SnapshotPack", "OCIDistribution",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ]
    ),

    // The scenario the nested-SVM lane runs inside its L1 VM (scripts/nested-lane, docs/nested-lane.md).
    .executableTarget(
      name: "forkd-lane", dependencies: ["VMMControl", "Protocol", "Syscalls"], linkerSettings: perChildLinking),

    // Fuzz targets of every parser of untrusted bytes (docs/hardening.md): replayed from
    // Fuzz/Corpus by FuzzRegressionTests, run under libFuzzer by scripts/fuzz (which builds
    // forkd-fuzz with -sanitize=fuzzer,address -DFUZZING into its own scratch directory).
    .target(name: "CFuzz"),
    .target(
      name: "FuzzTargets",
      dependencies: [
        "Protocol", "VMMCore", "Syscalls", "CKVM", "SupervisorCore", "ForkdHTTP", "VMMControl",
        "SnapshotPack", "OCIDistribution",
        .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOEmbedded", package: "swift-nio"),
        .product(name: "NIOHTTP1", package: "swift-nio"), .product(name: "Logging", package: "swift-log"),
      ]),
    .executableTarget(name: "forkd-fuzz", dependencies: ["FuzzTargets", "CFuzz"]),

    .testTarget(name: "ProtocolTests", dependencies: ["Protocol"]),
    .testTarget(
      name: "SnapshotPackTests",
      dependencies: ["SnapshotPack", "OCIDistribution", "Protocol", "Syscalls", "SnapshotStorage"]),
    .testTarget(name: "FuzzRegressionTests", dependencies: ["FuzzTargets"]),
    .testTarget(name: "VMMCoreTests", dependencies: ["VMMCore", "TestGuestImage"]),
    .testTarget(name: "SandboxTests", dependencies: ["Sandbox", "SeccompFilters", "CSeccomp", "Syscalls"]),
    .testTarget(
      name: "SystemdTests",
      dependencies: [
        "SystemdSupport", "CSystemd", "Syscalls", "ForkdClient", "VMMControl", "Protocol",
        .product(name: "Logging", package: "swift-log"),
      ]),
    .testTarget(name: "SyscallsTests", dependencies: ["Syscalls", "CUffd"]),
    // The Linux guest agent (guest/linux-agent, built by its script) over its Unix-socket seam.
    .testTarget(name: "LinuxAgentTests", dependencies: ["Protocol", "Syscalls"]),
    // Runs scripts/nested-lane/run (it builds release forkd-vmm, forkd-pager, forkd-lane of this tree).
    .testTarget(name: "NestedLaneTests", dependencies: ["Syscalls"]),
    .testTarget(
      name: "EndToEndTests",
      dependencies: [
        "VMMControl", "VMMCore", "Protocol", "Syscalls", "TestGuestImage", "ForkdClient", "SupervisorCore", "ForkdHTTP",
        .product(name: "Logging", package: "swift-log"),
      ]
    ),
  ]
)
