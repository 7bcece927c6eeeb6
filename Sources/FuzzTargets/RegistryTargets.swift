import OCIDistribution
import Protocol
import SnapshotPack

/// Fuzz targets of what a registry (or a pulled artifact on disk) hands forkd: the OCI manifest
/// and config of a snapshot artifact, references, auth challenges, Docker credentials and the
/// lazy pull's chunk plan.
enum RegistryTargets {
  /// First byte even: an OCI manifest (`ArtifactManifest`), odd: the config blob
  /// (`ArtifactConfig`). What decodes re-serializes to bytes that decode to the same value.
  static func artifact(_ bytes: [UInt8]) {
    var input = FuzzInput(bytes)
    let selector = input.u8()
    let data = input.rest()
    if selector & 1 == 0 {
      guard let m = try? ArtifactManifest.decode(data, source: "fuzz") else { return }
      check(m.config.mediaType == ForkdMediaType.config, "config media type \(m.config.mediaType) accepted")
      check(
        ([m.config] + m.layers).allSatisfy { SHA256.isDigestString($0.digest) }, "a descriptor digest is not sha256")
      check((try? ArtifactManifest.decode(m.serialized(), source: "again")) == m, "artifact manifest round trip")
    } else {
      guard let c = try? ArtifactConfig.decode(data, source: "fuzz") else { return }
      check(ArtifactConfig.chunkSizes.contains(c.chunkSize) && c.chunkSize & (c.chunkSize - 1) == 0, "chunk size")
      check(c.memorySize > 0 && c.memorySize % 4096 == 0, "memory size \(c.memorySize)")
      check((try? ArtifactConfig.decode(c.serialized(), source: "again")) == c, "artifact config round trip")
    }
  }

  /// `HOST[:PORT]/REPOSITORY[:TAG|@DIGEST]`: an accepted reference prints to text that parses to
  /// the same reference.
  static func imageReference(_ bytes: [UInt8]) {
    guard let ref = try? ImageReference.parse(String(decoding: bytes, as: UTF8.self)) else { return }
    check(!ref.host.isEmpty && !ref.repository.isEmpty && !ref.reference.isEmpty, "empty part in \(ref)")
    check((try? ImageReference.parse(ref.description)) == ref, "reference round trip: \(ref)")
  }

  /// A `WWW-Authenticate` header value: the scheme is one lowercased token, keys are lowercased.
  static func authChallenge(_ bytes: [UInt8]) {
    guard let challenge = AuthChallenge.parse(String(decoding: bytes, as: UTF8.self)) else { return }
    check(!challenge.scheme.isEmpty && !challenge.scheme.contains(" "), "scheme \"\(challenge.scheme)\"")
    check(challenge.scheme == challenge.scheme.lowercased(), "scheme not lowercased")
    check(challenge.parameters.keys.allSatisfy { !$0.isEmpty && $0 == $0.lowercased() }, "parameter keys")
  }

  /// A Docker `config.json` (`RegistryCredentials`): no more logins than `auths` entries.
  static func dockerConfig(_ bytes: [UInt8]) {
    guard let credentials = try? RegistryCredentials.parse(bytes, source: "fuzz") else { return }
    let entries = (try? JSONValue.parse(bytes, source: "fuzz", maxBytes: 1 << 20))?["auths"]?.objectValue?.count ?? 0
    check(credentials.logins.count <= entries, "\(credentials.logins.count) logins from \(entries) auths entries")
  }

  /// `lazy-chunks.json` of a lazily pulled layer (`LazyPlan`): every accepted chunk lies on a
  /// chunk boundary within one chunk, and the plan round-trips.
  static func lazyPlan(_ bytes: [UInt8]) {
    guard let plan = try? LazyPlan.decode(bytes, source: "fuzz") else { return }
    check(ArtifactConfig.chunkSizes.contains(plan.chunkSize), "chunk size \(plan.chunkSize)")
    for chunk in plan.chunks {
      let offset = chunk.annotations[ForkdMediaType.chunkOffsetAnnotation].flatMap(UInt64.init)
      check(offset.map { $0 % plan.chunkSize == 0 } == true && chunk.size <= plan.chunkSize, "chunk \(chunk)")
    }
    check((try? LazyPlan.decode(plan.serialized(), source: "again")) == plan, "lazy plan round trip")
  }
}
