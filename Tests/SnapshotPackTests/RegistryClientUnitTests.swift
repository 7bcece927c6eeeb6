import OCIDistribution
import Testing

@Suite struct RegistryClientUnitTests {
  @Test func referencesParseAndBadOnesAreNamed() throws {
    let r = try ImageReference.parse("127.0.0.1:5000/forkd/base:v1")
    #expect(r == ImageReference(host: "127.0.0.1:5000", repository: "forkd/base", reference: "v1"))
    #expect(r.isLoopback)
    let d = try ImageReference.parse("registry.internal/a/b@sha256:" + String(repeating: "a", count: 64))
    #expect(d.reference.hasPrefix("sha256:"))
    #expect(!d.isLoopback)
    #expect(try ImageReference.parse("localhost:1/x").reference == "latest")
    for (bad, fragment) in [
      ("no-slash", "HOST"), ("h/UPPER:v1", "repository"), ("h/x:-bad", "tag"), ("h/x@sha256:12", "digest"),
      ("h o/x", "host"), ("h/x//y", "repository"), (String(repeating: "a", count: 600), "512"),
    ] {
      let error = #expect(throws: RegistryError.self) { _ = try ImageReference.parse(bad) }
      #expect(error?.code == .badReference)
      #expect(error?.message.contains(fragment) == true, "\(bad): \(error?.message ?? "")")
    }
  }

  @Test func challengesParse() {
    let bearer = AuthChallenge.parse(
      #"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:forkd/base:pull,push""#)
    #expect(bearer?.scheme == "bearer")
    #expect(bearer?.parameters["realm"] == "https://auth.example/token")
    #expect(bearer?.parameters["scope"] == "repository:forkd/base:pull,push")
    let basic = AuthChallenge.parse(#"Basic realm="forkd \"test\"""#)
    #expect(basic?.scheme == "basic")
    #expect(basic?.parameters["realm"] == #"forkd "test""#)
    #expect(AuthChallenge.parse("   ") == nil)
  }

  @Test func credentialsFileFormats() throws {
    let text = #"{"auths":{"a:1":{"auth":"Zm9ya2Q6cDpx"},"b":{"username":"u","password":"p"}}}"#
    let c = try RegistryCredentials.parse(Array(text.utf8), source: "cfg")
    #expect(c.login(for: "a:1") == .init(username: "forkd", password: "p:q"))
    #expect(c.login(for: "b") == .init(username: "u", password: "p"))
    #expect(c.login(for: "c") == nil)
    let bad = #"{"auths":{"a":{"auth":"!!!"}}}"#
    let error = #expect(throws: RegistryError.self) {
      _ = try RegistryCredentials.parse(Array(bad.utf8), source: "cfg")
    }
    #expect(error?.message.contains("auths.a.auth") == true)
  }
}
