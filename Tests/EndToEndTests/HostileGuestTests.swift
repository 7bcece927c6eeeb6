import Protocol
import Syscalls
import Testing
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// The guest is untrusted: a test guest in hostile mode attacks its own devices (descriptors
/// outside RAM, loops, huge lengths, bad ring indices, bogus vsock packets, register and port
/// sweeps). The VMM must neither crash nor hang, and a sibling VM must not notice.
@Suite("Hostile guest", .serialized)
struct HostileGuestTests {
  @Test(
    "every attack: the VMM survives (no signal, control still answers), the sibling keeps working",
    arguments: HostileAttack.allCases)
  func attack(_ kind: HostileAttack) throws {
    let scratch = try Scratch("hostile-\(kind.rawValue)")
    let sibling = try VMMProcess.launch(
      .boot(image: "builtin:test-guest", memoryMiB: 32, vcpus: 1), runDirectory: scratch.path + "/sibling")
    defer { sibling.stop() }
    let siblingAgent = try sibling.agent()
    _ = try siblingAgent.counter(add: 1)

    let victim = try VMMProcess.launch(
      .boot(image: "builtin:test-guest", memoryMiB: 32, vcpus: 1), runDirectory: scratch.path + "/victim",
      extraArguments: kind.targetsNIC ? ["--nic"] : [])
    let agent = try victim.agent()
    #expect(try agent.request(.attack(kind: kind.rawValue)) == .attacking)

    // The guest says on its console when it is done attacking (or the VM stopped first).
    var console = ""
    for _ in 0..<500 {
      console = String(decoding: (try? FileSystem.readFile(victim.consoleLog)) ?? [], as: UTF8.self)
      if console.contains("hostile: attack done") || victim.hasExited { break }
      Clock.sleep(milliseconds: 20)
    }
    if victim.hasExited {
      // Stopping the VM is allowed, but as a decision with a reason, never a crash.
      let end = try #require(victim.termination)
      guard case .exited = end else {
        Issue.record("forkd-vmm died of \(end) after \(kind): \(lastLines(of: victim.vmmLog))")
        return
      }
      #expect(!lastLines(of: victim.vmmLog).isEmpty, "a stopped VM says why")
      print("hostile \(kind): VM stopped (\(end)): \(lastLines(of: victim.vmmLog, count: 2))")
    } else {
      #expect(console.contains("hostile: attack done"), "the guest finished its attack: \(console.suffix(300))")
      // Not hung: the control socket answers, and the VMM stops cleanly when asked.
      let status = try victim.control().status(timeoutMS: 5000)
      #expect(status.state != .exited, "\(status)")
      print("hostile \(kind): survived; vmm log: \(lastLines(of: victim.vmmLog, count: 2))")
      // The device says what the guest did wrong (and refuses to go on) rather than guessing.
      let expected: [String] =
        switch kind {
        case .descriptorOutsideRAM, .descriptorLoop, .hugeLength, .badAvailEntry, .availIndexJump,
          .availIndexBackward, .wrappingAddress:
          ["device needs reset"]
        case .netDescriptorOutsideRAM, .netRxIndexBackward, .netDescriptorLoop:
          ["virtio-net: ", "device needs reset"]
        case .bogusPacket: ["dropped"]
        case .netShortFrame: ["virtio-net: ", "dropped"]
        case .mmioSweep, .pioSweep, .lyingReplies: []
        }
      let log = String(decoding: try FileSystem.readFile(victim.vmmLog), as: UTF8.self)
      for text in expected {
        #expect(log.contains(text), "\(kind): \(log.suffix(400))")
      }
      let end = victim.stop(timeoutMS: 10_000)
      #expect(end == .exited(0), "forkd-vmm after \(kind): \(String(describing: end)) \(lastLines(of: victim.vmmLog))")
    }
    // The sibling never noticed.
    #expect(try siblingAgent.counter(add: 1) == 2)
    #expect(try siblingAgent.ping().kind == AgentPong.testGuestKind)
  }
}
