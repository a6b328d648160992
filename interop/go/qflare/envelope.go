package qflare

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"math"
	"regexp"
)

// Protocol constants (§2, §4, §5).
const (
	Version       = 2
	SigAlg        = "ML-DSA-65"
	SigSize       = 3309
	PublicKeySize = 1952
	KEMPublicSize = 1184
	Domain        = "qflare.envelope"
	MaxRecord     = 8 * 1024 * 1024
	MaxMessage    = 256 * 1024 * 1024
	MaxChunks     = 4096
)

var (
	typeRe     = regexp.MustCompile(`^[a-z][a-z0-9_]{0,63}$`)
	idRe       = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$`)
	eventRe    = regexp.MustCompile(`^[a-z][a-z0-9_.]{0,63}$`)
	reasonRe   = regexp.MustCompile(`^[a-z][a-z0-9_]{0,63}$`)
	envOrder   = []string{"v", "type", "id", "sender", "key_id", "ts_ms", "round", "body_digest", "body", "chunk", "sig_alg", "sig"}
	chunkOrder = []string{"stream", "index", "count"}
)

// checkKeys is the key rule of every fixed-key map (§6): the first key, in
// wire order, that is not in keys; else the first of keys that is missing.
func checkKeys(x Value, keys []string, path string) error {
	for _, e := range x.Map {
		found := false
		for _, k := range keys {
			found = found || k == e.Key
		}
		if !found {
			return errf("schema", joinKey(path, e.Key), "unexpected key")
		}
	}
	for _, k := range keys {
		if _, ok := x.Get(k); !ok {
			return errf("schema", joinKey(path, k), "missing key")
		}
	}
	return nil
}

// Chunk is the chunk header of a model_chunk envelope (§2, §9).
type Chunk struct {
	Stream [16]byte
	Index  uint64
	Count  uint64
}

// Header is every envelope field except body and sig.
type Header struct {
	V          uint64
	Type       string
	ID         [16]byte
	Sender     string
	KeyID      [16]byte
	TsMs       uint64
	Round      *uint64
	BodyDigest [32]byte
	Chunk      *Chunk
	SigAlg     string
}

// Envelope is one decoded record (§2).
type Envelope struct {
	Header
	Body []byte
	Sig  []byte
}

// KeyID is the first 16 bytes of SHA-256 over the raw public key (§5).
func KeyID(pub []byte) [16]byte {
	sum := sha256.Sum256(pub)
	var id [16]byte
	copy(id[:], sum[:16])
	return id
}

// Channel is where a record belongs (§4): the deployment id and the full
// topic name. Both are signed but never sent: a sender signs for the topic it
// produces to, a receiver verifies with its own deployment id and the topic it
// read the record from.
type Channel struct {
	Deployment string
	Topic      string
}

// SigningBytes is the shortest-form msgpack array of 13 elements of §4.
func SigningBytes(h *Header, ch Channel) []byte {
	b := make([]byte, 0, 256)
	b = AppendArrayHeader(b, 13)
	b = AppendStr(b, Domain)
	b = AppendUint(b, h.V)
	b = AppendStr(b, ch.Deployment)
	b = AppendStr(b, ch.Topic)
	b = AppendStr(b, h.Type)
	b = AppendBin(b, h.ID[:])
	b = AppendStr(b, h.Sender)
	b = AppendBin(b, h.KeyID[:])
	b = AppendUint(b, h.TsMs)
	if h.Round == nil {
		b = AppendNil(b)
	} else {
		b = AppendUint(b, *h.Round)
	}
	b = AppendBin(b, h.BodyDigest[:])
	if h.Chunk == nil {
		b = AppendNil(b)
	} else {
		b = AppendArrayHeader(b, 3)
		b = AppendBin(b, h.Chunk.Stream[:])
		b = AppendUint(b, h.Chunk.Index)
		b = AppendUint(b, h.Chunk.Count)
	}
	return AppendStr(b, h.SigAlg)
}

// Encode writes the envelope map of §2, keys in the mandated order.
func (e *Envelope) Encode() []byte {
	b := make([]byte, 0, 256+len(e.Body)+len(e.Sig))
	b = AppendMapHeader(b, 12)
	b = AppendStr(b, "v")
	b = AppendUint(b, e.V)
	b = AppendStr(b, "type")
	b = AppendStr(b, e.Type)
	b = AppendStr(b, "id")
	b = AppendBin(b, e.ID[:])
	b = AppendStr(b, "sender")
	b = AppendStr(b, e.Sender)
	b = AppendStr(b, "key_id")
	b = AppendBin(b, e.KeyID[:])
	b = AppendStr(b, "ts_ms")
	b = AppendUint(b, e.TsMs)
	b = AppendStr(b, "round")
	if e.Round == nil {
		b = AppendNil(b)
	} else {
		b = AppendUint(b, *e.Round)
	}
	b = AppendStr(b, "body_digest")
	b = AppendBin(b, e.BodyDigest[:])
	b = AppendStr(b, "body")
	b = AppendBin(b, e.Body)
	b = AppendStr(b, "chunk")
	if e.Chunk == nil {
		b = AppendNil(b)
	} else {
		b = AppendMapHeader(b, 3)
		b = AppendStr(b, "stream")
		b = AppendBin(b, e.Chunk.Stream[:])
		b = AppendStr(b, "index")
		b = AppendUint(b, e.Chunk.Index)
		b = AppendStr(b, "count")
		b = AppendUint(b, e.Chunk.Count)
	}
	b = AppendStr(b, "sig_alg")
	b = AppendStr(b, e.SigAlg)
	b = AppendStr(b, "sig")
	return AppendBin(b, e.Sig)
}

// NewUUIDv7 returns a UUIDv7 (RFC 9562) for ts_ms (§3).
func NewUUIDv7(tsMs uint64) [16]byte {
	var id [16]byte
	if _, err := rand.Read(id[6:]); err != nil {
		panic(err)
	}
	var ts [8]byte
	binary.BigEndian.PutUint64(ts[:], tsMs)
	copy(id[0:6], ts[2:8])
	id[6] = 0x70 | id[6]&0x0f
	id[8] = 0x80 | id[8]&0x3f
	return id
}

// IsUUIDv7 applies the receiver checks of §3.
func IsUUIDv7(b []byte) bool {
	return len(b) == 16 && b[6]>>4 == 7 && b[8]>>6 == 2
}

// ParseEnvelope applies steps 1 to 5 of §6 (topicTypes nil: every body type
// is accepted). Body and Sig alias rec.
func ParseEnvelope(rec []byte, maxRecord int, topicTypes []string) (*Envelope, error) {
	if len(rec) > maxRecord { // step 1
		return nil, errf("limit", "$", "record of %d bytes exceeds %d", len(rec), maxRecord)
	}
	root, err := Unmarshal(rec, EnvelopeLimits, "") // step 2
	if err != nil {
		return nil, err
	}
	if root.Kind != KMap {
		return nil, errf("schema", "$", "envelope is %s, not map", root.Kind)
	}
	// step 3
	v, ok := root.Get("v")
	if !ok || v.Kind != KInt {
		return nil, errf("schema", "v", "missing or not an int")
	}
	if v.Neg || v.U != Version {
		return nil, errf("version", "v", "unsupported protocol version")
	}
	// step 4: exactly the 12 keys, then each value in §2 order
	if err := checkKeys(root, envOrder, ""); err != nil {
		return nil, err
	}
	get := func(k string) Value { x, _ := root.Get(k); return x }
	env := &Envelope{}
	env.V = v.U
	if t := get("type"); t.Kind != KStr || !typeRe.MatchString(t.S) {
		return nil, errf("schema", "type", "not a type name")
	} else {
		env.Type = t.S
	}
	if x := get("id"); x.Kind != KBin || !IsUUIDv7(x.Raw) {
		return nil, errf("schema", "id", "not a 16-byte UUIDv7")
	} else {
		copy(env.ID[:], x.Raw)
	}
	if x := get("sender"); x.Kind != KStr || !idRe.MatchString(x.S) {
		return nil, errf("schema", "sender", "not a valid sender")
	} else {
		env.Sender = x.S
	}
	if x := get("key_id"); x.Kind != KBin || len(x.Raw) != 16 {
		return nil, errf("schema", "key_id", "not bin 16")
	} else {
		copy(env.KeyID[:], x.Raw)
	}
	if x := get("ts_ms"); x.Kind != KInt || x.Neg {
		return nil, errf("schema", "ts_ms", "not an int in 0..2^64-1")
	} else {
		env.TsMs = x.U
	}
	switch x := get("round"); {
	case x.Kind == KNil:
	case x.Kind == KInt && !x.Neg && x.U <= math.MaxInt64:
		r := x.U
		env.Round = &r
	default:
		return nil, errf("schema", "round", "not nil or an int in 0..2^63-1")
	}
	if x := get("body_digest"); x.Kind != KBin || len(x.Raw) != 32 {
		return nil, errf("schema", "body_digest", "not bin 32")
	} else {
		copy(env.BodyDigest[:], x.Raw)
	}
	if x := get("body"); x.Kind != KBin {
		return nil, errf("schema", "body", "not bin")
	} else {
		env.Body = x.Raw
	}
	if x := get("chunk"); x.Kind != KNil {
		c, err := parseChunk(x)
		if err != nil {
			return nil, err
		}
		env.Chunk = c
	}
	if x := get("sig_alg"); x.Kind != KStr || x.S != SigAlg {
		return nil, errf("schema", "sig_alg", "not %q", SigAlg)
	} else {
		env.SigAlg = x.S
	}
	if x := get("sig"); x.Kind != KBin || len(x.Raw) != SigSize {
		return nil, errf("schema", "sig", "not bin %d", SigSize)
	} else {
		env.Sig = x.Raw
	}
	// step 5
	if !typeAccepted(env.Type, topicTypes) {
		return nil, errf("schema", "type", "type %q not accepted on this topic", env.Type)
	}
	if (env.Chunk != nil) != (env.Type == "model_chunk") {
		return nil, errf("schema", "chunk", "chunk must be non-nil exactly for model_chunk")
	}
	return env, nil
}

// typeAccepted: a body type of §7 that the topic carries (any, when topicTypes is nil).
func typeAccepted(typ string, topicTypes []string) bool {
	if bodySchemas[typ] == nil {
		return false
	}
	if topicTypes == nil {
		return true
	}
	for _, t := range topicTypes {
		if t == typ {
			return true
		}
	}
	return false
}

func parseChunk(x Value) (*Chunk, error) {
	if x.Kind != KMap {
		return nil, errf("schema", "chunk", "not nil or a map")
	}
	if err := checkKeys(x, chunkOrder, "chunk"); err != nil {
		return nil, err
	}
	s, _ := x.Get("stream")
	i, _ := x.Get("index")
	n, _ := x.Get("count")
	if s.Kind != KBin || !IsUUIDv7(s.Raw) {
		return nil, errf("schema", "chunk.stream", "not a 16-byte UUIDv7")
	}
	if i.Kind != KInt || i.Neg {
		return nil, errf("schema", "chunk.index", "not an int in 0..2^64-1")
	}
	if n.Kind != KInt || n.Neg || n.U < 1 || n.U > MaxChunks {
		return nil, errf("schema", "chunk.count", "not in 1..%d", MaxChunks)
	}
	if i.U >= n.U {
		return nil, errf("schema", "chunk.index", "index %d not below count %d", i.U, n.U)
	}
	c := &Chunk{Index: i.U, Count: n.U}
	copy(c.Stream[:], s.Raw)
	return c, nil
}

// BodyDigestOK is step 9 of §6.
func (e *Envelope) BodyDigestOK() bool {
	return sha256.Sum256(e.Body) == e.BodyDigest
}

func u64ptr(u uint64) *uint64 { return &u }

// RoundPtr is a helper for building headers.
func RoundPtr(r uint64) *uint64 { return u64ptr(r) }
