import Protocol
import Testing

@Suite("JSON")
struct JSONTests {
  func parse(_ s: String) throws -> JSONValue { try JSONValue.parse(s, source: "t.json") }

  func parseError(_ s: String, sourceLocation: SourceLocation = #_sourceLocation) -> ProtocolError? {
    #expect(throws: ProtocolError.self, sourceLocation: sourceLocation) { try JSONValue.parse(s, source: "t.json") }
  }

  @Test func scalars() throws {
    #expect(try parse("null") == .null)
    #expect(try parse("true") == .bool(true))
    #expect(try parse(" false ") == .bool(false))
    #expect(try parse("0") == .integer(0))
    #expect(try parse("-0") == .integer(0))
    #expect(try parse("42") == .integer(42))
    #expect(try parse("-9223372036854775808") == .integer(.min))
    #expect(try parse("9223372036854775807") == .integer(.max))
    #expect(try parse("9223372036854775808") == .double(9_223_372_036_854_775_808))
    #expect(try parse("1.5") == .double(1.5))
    #expect(try parse("1.0") == .double(1.0))
    #expect(try parse("-2.5e-3") == .double(-0.0025))
    #expect(try parse("1E2") == .double(100))
    #expect(try parse("1e+2") == .double(100))
    #expect(try parse("\"hi\"") == .string("hi"))
  }

  @Test func containers() throws {
    let v = try parse(#" { "a" : [1, 2.5, "x", null, true, {}], "b": {"c": []} } "#)
    #expect(
      v
        == .object([
          "a": .array([.integer(1), .double(2.5), .string("x"), .null, .bool(true), .object([:])]),
          "b": .object(["c": .array([])]),
        ]))
    #expect(v["b"]?["c"]?.arrayValue == [])
    #expect(v["missing"] == nil)
    #expect(JSONValue.integer(1)["a"] == nil)
  }

  @Test func escapes() throws {
    #expect(try parse(#""\"\\\/\b\f\n\r\t""#) == .string("\"\\/\u{08}\u{0C}\n\r\t"))
    #expect(try parse(#""\u0041\u00e9\u20AC""#) == .string("Aé€"))
    #expect(try parse(#""\ud83d\ude00""#) == .string("😀"))
    #expect(try parse(#""\u0000""#) == .string("\u{0}"))
    #expect(try parse("\"raw é 😀\"") == .string("raw é 😀"))
  }

  @Test func badEscapesAndSurrogates() {
    #expect(parseError(#""\x""#)?.code == .malformed)
    #expect(parseError(#""\u12G4""#)?.code == .malformed)
    #expect(parseError(#""\u12"#)?.code == .truncated)
    let lone = parseError(#""\ud83d""#)
    #expect(lone?.code == .malformed)
    #expect(lone?.message.contains("not followed by a low surrogate") == true)
    #expect(parseError(#""\ud83d\u0041""#)?.code == .malformed)
    #expect(parseError(#""\ude00""#)?.message.contains("lone low surrogate") == true)
  }

  @Test func controlCharactersAndInvalidUTF8() throws {
    #expect(parseError("\"a\nb\"")?.message.contains("unescaped control character") == true)
    #expect(parseError("\"a\tb\"")?.code == .malformed)
    for bad: [UInt8] in [
      [0x22, 0xC3, 0x28, 0x22],  // bad continuation
      [0x22, 0xC0, 0xAF, 0x22],  // overlong
      [0x22, 0xED, 0xA0, 0x80, 0x22],  // encoded surrogate
      [0x22, 0xF4, 0x90, 0x80, 0x80, 0x22],  // > U+10FFFF
      [0x22, 0xFF, 0x22],
    ] {
      #expect(throws: ProtocolError.self) { try JSONValue.parse(bad, source: "b") }
    }
    let truncated = #expect(throws: ProtocolError.self) { try JSONValue.parse([0x22, 0xE2, 0x82], source: "b") }
    #expect(truncated?.code == .truncated)
    #expect(try JSONValue.parse([0x22, 0xE2, 0x82, 0xAC, 0x22], source: "b") == .string("€"))
  }

  @Test func strictGrammar() {
    for bad in [
      "", " ", "[1,]", "{\"a\":1,}", "[1 2]", "{\"a\" 1}", "{a:1}", "{'a':1}", "01", "-", "1.", ".5", "1e",
      "+1", "NaN", "Infinity", "-Infinity", "tru", "nul", "True", "[", "{", "[1", "{\"a\":", "\"abc",
      "1 2", "[] x", "// c\n1", "/* c */ 1", "0x10", "\u{FEFF}1", "[1]]", "\u{0B}1",
    ] {
      #expect(throws: ProtocolError.self, "\(bad)") { try JSONValue.parse(bad, source: "t.json") }
    }
  }

  @Test func errorCarriesLineAndColumn() {
    let e = parseError("{\n  \"a\": 1,\n  \"b\" 2\n}")
    #expect(e?.code == .malformed)
    #expect(e?.message == "t.json:3:7: expected ':' after object key, got '2'")
    let end = parseError("[1,\n 2")
    #expect(end?.code == .truncated)
    #expect(end?.message == "t.json:2:3: unexpected end of input, expected ',' or ']' in array")
    // Columns count characters, not bytes.
    #expect(parseError("[\"é\" x]")?.message == "t.json:1:6: expected ',' or ']' in array, got 'x'")
  }

  @Test func duplicateKeysRejected() {
    let e = parseError(#"{"a": 1, "a": 2}"#)
    #expect(e?.code == .malformed)
    #expect(e?.message == "t.json:1:10: duplicate key \"a\"")
  }

  @Test func numberOutOfRange() {
    let e = parseError("1e400")
    #expect(e?.code == .badValue)
    #expect(e?.message == "t.json:1:1: number 1e400 is out of range")
  }

  @Test func depthLimit() throws {
    let ok = String(repeating: "[", count: 64) + String(repeating: "]", count: 64)
    #expect(try parse(ok).arrayValue != nil)
    let deep = String(repeating: "[", count: 65) + String(repeating: "]", count: 65)
    let e = parseError(deep)
    #expect(e?.code == .tooLarge)
    #expect(e?.message.contains("nesting deeper than 64") == true)
    let deepObjects = String(repeating: "{\"a\":", count: 65) + "1" + String(repeating: "}", count: 65)
    #expect(parseError(deepObjects)?.code == .tooLarge)
    // Hostile depth far beyond the limit fails cleanly rather than overflowing the stack.
    #expect(parseError(String(repeating: "[", count: 100_000))?.code == .tooLarge)
  }

  @Test func sizeLimit() throws {
    let text = "[" + String(repeating: "1,", count: 50) + "1]"
    #expect(try JSONValue.parse(text, source: "s", maxBytes: text.utf8.count).arrayValue?.count == 51)
    let e = #expect(throws: ProtocolError.self) { try JSONValue.parse(text, source: "s", maxBytes: 100) }
    #expect(e?.code == .tooLarge)
    #expect(e?.message == "s: 103 bytes exceeds the limit of 100 bytes")
  }

  @Test func serializationIsSortedAndCompact() {
    let v = JSONValue.object([
      "z": .integer(1), "a": .array([.null, .bool(false), .double(0.5)]),
      "m": .object(["y": .string("q"), "b": .object([:])]),
    ])
    #expect(v.serialized() == #"{"a":[null,false,0.5],"m":{"b":{},"y":"q"},"z":1}"#)
    #expect(
      v.serialized(pretty: true) == """
        {
          "a": [
            null,
            false,
            0.5
          ],
          "m": {
            "b": {},
            "y": "q"
          },
          "z": 1
        }
        """)
  }

  @Test func stringEscapingOnOutput() {
    #expect(
      JSONValue.string("a\"b\\c\n\t\r\u{08}\u{0C}\u{01}\u{1F}\u{7F}é😀").serialized()
        == #""a\"b\\c\n\t\r\b\f\u0001\u001f\u007fé😀""#)
    #expect(JSONValue.string("/").serialized() == #""/""#)
  }

  @Test func numbersOnOutput() throws {
    #expect(JSONValue.integer(.min).serialized() == "-9223372036854775808")
    #expect(JSONValue.integer(.max).serialized() == "9223372036854775807")
    #expect(JSONValue.double(.infinity).serialized() == "null")
    #expect(JSONValue.double(.nan).serialized() == "null")
    for d in [
      0.1, 1.0, -0.0, 1e-5, 1e17, .leastNonzeroMagnitude, .leastNormalMagnitude, .greatestFiniteMagnitude,
      3.141592653589793, 123456.789e10,
    ] {
      let text = JSONValue.double(d).serialized()
      let back = try JSONValue.parse(text, source: "d")
      #expect(back == .double(d), "\(d) -> \(text)")
      #expect(back.doubleValue?.sign == d.sign)
    }
  }

  @Test func roundTrip() throws {
    let v = JSONValue.object([
      "s": .string("line\nbreak \"quoted\" \u{0} ünï 😀"),
      "i": .integer(-123_456_789_012),
      "d": .double(-1.25e-7),
      "b": .bool(true),
      "n": .null,
      "a": .array([.array([]), .object(["k": .integer(0)])]),
    ])
    #expect(try JSONValue.parse(v.serialized(), source: "r") == v)
    #expect(try JSONValue.parse(v.serialized(pretty: true), source: "r") == v)
    #expect(!v.serialized().contains("\n"))
  }

  @Test func accessors() {
    #expect(JSONValue.string("x").stringValue == "x")
    #expect(JSONValue.integer(1).stringValue == nil)
    #expect(JSONValue.integer(-1).int64Value == -1)
    #expect(JSONValue.integer(-1).uint64Value == nil)
    #expect(JSONValue.integer(7).uint64Value == 7)
    #expect(JSONValue.double(7).uint64Value == nil)
    #expect(JSONValue.double(7).int64Value == nil)
    #expect(JSONValue.integer(7).doubleValue == 7)
    #expect(JSONValue.bool(true).boolValue == true)
    #expect(JSONValue.null.boolValue == nil)
    #expect(JSONValue.null.isNull)
    #expect(JSONValue.array([.null]).arrayValue == [.null])
    #expect(JSONValue.object(["a": .null]).objectValue == ["a": .null])
    #expect(JSONValue.string("").objectValue == nil)
  }
}

@Suite("JSONObjectReader")
struct JSONObjectReaderTests {
  func reader(_ s: String) throws -> JSONObjectReader {
    try JSONObjectReader(JSONValue.parse(s, source: "m.json"), source: "m.json")
  }

  @Test func readsTypedFields() throws {
    let r = try reader(
      #"{"s":"x","u":18446744073,"n":-5,"b":true,"z":null,"o":{"k":"v"},"a":[1],"u32":4294967295}"#)
    #expect(try r.string("s") == "x")
    #expect(try r.uint64("u") == 18_446_744_073)
    #expect(try r.int64("n") == -5)
    #expect(try r.bool("b"))
    #expect(try r.uint32("u32") == .max)
    #expect(try r.optionalString("z") == nil)
    #expect(try r.optionalString("missing") == nil)
    #expect(try r.optionalUInt64("u") == 18_446_744_073)
    #expect(try r.optionalUInt32("missing") == nil)
    #expect(try r.optionalInt64("n") == -5)
    #expect(try r.optionalBool("z") == nil)
    #expect(try r.object("o").string("k") == "v")
    #expect(try r.optionalObject("missing") == nil)
    #expect(try r.array("a") == [.integer(1)])
    #expect(try r.optionalArray("z") == nil)
    #expect(r.has("s"))
    #expect(!r.has("z"))
    #expect(r.value("z") == .null)
  }

  @Test func errorsNameSourceFieldAndValue() throws {
    let r = try reader(#"{"s":3,"neg":-1,"big":4294967296,"str":"abc","o":{"k":1}}"#)
    var e = #expect(throws: ProtocolError.self) { try r.string("missing") }
    #expect(e == ProtocolError(.missingField, "m.json: missing field \"missing\""))
    e = #expect(throws: ProtocolError.self) { try r.string("s") }
    #expect(e == ProtocolError(.badField, "m.json: field \"s\": expected a string, got integer 3"))
    e = #expect(throws: ProtocolError.self) { try r.uint64("neg") }
    #expect(e == ProtocolError(.badValue, "m.json: field \"neg\": expected a non-negative integer, got -1"))
    e = #expect(throws: ProtocolError.self) { try r.uint32("big") }
    #expect(
      e == ProtocolError(.badValue, "m.json: field \"big\": expected an integer in 0...4294967295, got 4294967296"))
    e = #expect(throws: ProtocolError.self) { try r.bool("str") }
    #expect(e == ProtocolError(.badField, "m.json: field \"str\": expected true or false, got string \"abc\""))
    e = #expect(throws: ProtocolError.self) { try r.object("o").string("k") }
    #expect(e == ProtocolError(.badField, "m.json: field \"o.k\": expected a string, got integer 1"))
    e = #expect(throws: ProtocolError.self) { try r.optionalString("s") }
    #expect(e?.code == .badField)
    e = #expect(throws: ProtocolError.self) { try r.int64("str") }
    #expect(e?.code == .badField)
  }

  @Test func nonObjectRejected() {
    let e = #expect(throws: ProtocolError.self) { try JSONObjectReader(.array([]), source: "m.json") }
    #expect(e == ProtocolError(.badField, "m.json: expected a JSON object, got array of 0 elements"))
  }

  @Test func rejectUnknownKeys() throws {
    let r = try reader(#"{"a":1,"zz":2,"b":3}"#)
    try r.rejectUnknownKeys(allowed: ["a", "b", "zz"])
    let e = #expect(throws: ProtocolError.self) { try r.rejectUnknownKeys(allowed: ["a"]) }
    #expect(e == ProtocolError(.badField, "m.json: unknown field \"b\""))
  }

  @Test func longValuesAreShortenedInMessages() throws {
    let long = String(repeating: "x", count: 500)
    let r = try reader("{\"s\":\"\(long)\"}")
    let e = #expect(throws: ProtocolError.self) { try r.uint64("s") }
    #expect((e?.message.count ?? 1000) < 150)
    #expect(e?.message.hasSuffix("...") == true)
  }
}
