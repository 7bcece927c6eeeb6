import Protocol

/// An OCI content descriptor: what a blob is, its digest and its size.
public struct Descriptor: Equatable, Sendable {
  public var mediaType: String
  public var digest: String
  public var size: UInt64
  public var annotations: [String: String]

  public init(mediaType: String, digest: String, size: UInt64, annotations: [String: String] = [:]) {
    self.mediaType = mediaType
    self.digest = digest
    self.size = size
    self.annotations = annotations
  }

  /// The descriptor of `bytes`.
  public static func of(_ bytes: [UInt8], mediaType: String, annotations: [String: String] = [:]) -> Descriptor {
    Descriptor(
      mediaType: mediaType, digest: SHA256.digestString(of: bytes), size: UInt64(bytes.count),
      annotations: annotations)
  }

  public var jsonValue: JSONValue {
    var o: [String: JSONValue] = [
      "mediaType": .string(mediaType), "digest": .string(digest), "size": .integer(Int64(clamping: size)),
    ]
    if !annotations.isEmpty { o["annotations"] = .object(annotations.mapValues { .string($0) }) }
    return .object(o)
  }

  /// Parses and checks a descriptor (digest form, size range) from untrusted JSON.
  public static func decode(_ value: JSONValue, source: String) throws(PackError) -> Descriptor {
    do {
      let r = try JSONObjectReader(value, source: source)
      let digest = try r.string("digest")
      guard SHA256.isDigestString(digest) else {
        throw PackError(.invalidArtifact, "\(source): digest \"\(digest.prefix(80))\" is not sha256:<64 hex>")
      }
      let size = try r.uint64("size")
      var annotations: [String: String] = [:]
      if let a = try r.optionalObject("annotations") {
        for (key, value) in a.members {
          guard let text = value.stringValue else {
            throw PackError(.invalidArtifact, "\(source): annotation \(key) is not a string")
          }
          annotations[key] = text
        }
      }
      return Descriptor(mediaType: try r.string("mediaType"), digest: digest, size: size, annotations: annotations)
    } catch let error as PackError {
      throw error
    } catch {
      throw PackError(.invalidArtifact, "\(error)")
    }
  }
}

/// An OCI image manifest carrying a forkd snapshot.
public struct ArtifactManifest: Equatable, Sendable {
  public var config: Descriptor
  public var layers: [Descriptor]
  public var annotations: [String: String]

  public init(config: Descriptor, layers: [Descriptor], annotations: [String: String] = [:]) {
    self.config = config
    self.layers = layers
    self.annotations = annotations
  }

  /// Manifests larger than this are refused before parsing (a 1 GiB memory in 2 MiB chunks
  /// is about 100 KiB of JSON).
  public static let maxBytes = 4 << 20

  public func serialized() -> [UInt8] {
    var o: [String: JSONValue] = [
      "schemaVersion": .integer(2), "mediaType": .string(ForkdMediaType.ociManifest),
      "artifactType": .string(ForkdMediaType.artifact), "config": config.jsonValue,
      "layers": .array(layers.map(\.jsonValue)),
    ]
    if !annotations.isEmpty { o["annotations"] = .object(annotations.mapValues { .string($0) }) }
    return Array(JSONValue.object(o).serialized().utf8)
  }

  /// Parses an OCI manifest from a store and checks it is a forkd snapshot this reader knows.
  public static func decode(_ bytes: [UInt8], source: String) throws(PackError) -> ArtifactManifest {
    guard bytes.count <= maxBytes else {
      throw PackError(.invalidArtifact, "\(source): manifest of \(bytes.count) bytes exceeds \(maxBytes)")
    }
    do {
      let r = try JSONObjectReader(JSONValue.parse(bytes, source: source, maxBytes: maxBytes), source: source)
      let schema = try r.int64("schemaVersion")
      guard schema == 2 else { throw PackError(.invalidArtifact, "\(source): schemaVersion \(schema) is not 2") }
      if let mediaType = try r.optionalString("mediaType"), mediaType != ForkdMediaType.ociManifest {
        throw PackError(.invalidArtifact, "\(source): mediaType \(mediaType) is not \(ForkdMediaType.ociManifest)")
      }
      let config = try Descriptor.decode(r.value("config") ?? .null, source: source + " config")
      guard config.mediaType == ForkdMediaType.config else {
        throw PackError(
          .invalidArtifact,
          "\(source): config mediaType \(config.mediaType) is not \(ForkdMediaType.config) (not a forkd snapshot, or a newer artifact version)"
        )
      }
      var layers: [Descriptor] = []
      for (i, layer) in try r.array("layers").enumerated() {
        layers.append(try Descriptor.decode(layer, source: "\(source) layers[\(i)]"))
      }
      var annotations: [String: String] = [:]
      if let a = try r.optionalObject("annotations") {
        for (key, value) in a.members { if let text = value.stringValue { annotations[key] = text } }
      }
      return ArtifactManifest(config: config, layers: layers, annotations: annotations)
    } catch let error as PackError {
      throw error
    } catch {
      throw PackError(.invalidArtifact, "\(error)")
    }
  }
}
