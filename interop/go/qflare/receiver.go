package qflare

import (
	"bytes"
	"crypto/sha256"
	"fmt"

	"github.com/cloudflare/circl/sign/mldsa/mldsa65"
)

// KeyRing maps key_id to (owner, public key) for steps 6 and 7 of §6.
type KeyRing struct {
	keys map[[16]byte]ringKey
}

type ringKey struct {
	owner string
	pub   *mldsa65.PublicKey
}

// NewKeyRing returns an empty key ring.
func NewKeyRing() *KeyRing { return &KeyRing{keys: map[[16]byte]ringKey{}} }

// Add registers a raw 1952-byte public key as belonging to owner.
func (k *KeyRing) Add(owner string, pub []byte) error {
	pk, err := ParsePublicKey(pub)
	if err != nil {
		return err
	}
	k.keys[KeyID(pub)] = ringKey{owner, pk}
	return nil
}

// Message is an accepted message. For a reassembled stream, ID is the
// stream id, Type the inner type and Body the reassembled body.
type Message struct {
	Header  Header
	ID      [16]byte
	Type    string
	BodyRaw []byte
	Body    Value
}

// Receiver applies the checks of §6 in order.
type Receiver struct {
	Keys *KeyRing
	// Channel is this receiver's deployment id and the topic it reads from:
	// every signature must have been made for it (§4).
	Channel         Channel
	MaxRecord       int      // 0: 8 MiB
	TopicTypes      []string // nil: any type
	AllowSelfSigned bool
	AllowNonFinite  bool // tensors only: NaN or infinity in a number map is always refused (§7)
	// Now returns the current time in ms; nil disables the age check (§6 step 10).
	Now       func() uint64
	MaxAgeMs  uint64
	MaxSkewMs uint64

	seen    map[string]bool
	streams map[string]*stream
	done    map[string]bool
}

type stream struct {
	first  *Envelope // chunk 0 once it is in, until then the first chunk received
	inner  string
	size   uint64
	digest []byte
	parts  map[uint64][]byte // index -> slice
	offset map[uint64]uint64 // index -> offset
}

func replayKey(sender string, id [16]byte) string { return sender + "\x00" + string(id[:]) }

// Receive checks one record. It returns (nil, nil) for a chunk that does not
// yet complete its stream or is a late duplicate.
func (r *Receiver) Receive(rec []byte) (*Message, error) {
	maxRecord := r.MaxRecord
	if maxRecord == 0 {
		maxRecord = MaxRecord
	}
	env, err := ParseEnvelope(rec, maxRecord, r.TopicTypes) // steps 1-5
	if err != nil {
		return nil, err
	}
	var body Value
	bodyDone := false
	k, known := r.Keys.keys[env.KeyID] // step 6
	switch {
	case known:
		if k.owner != env.Sender { // step 7
			return nil, errf("key_mismatch", "sender", "key %x belongs to %q", env.KeyID, k.owner)
		}
		if !VerifySig(k.pub, &env.Header, r.Channel, env.Sig) { // step 8
			return nil, errf("signature", "sig", "signature does not verify")
		}
		if !env.BodyDigestOK() { // step 9
			return nil, errf("digest", "body", "SHA-256(body) != body_digest")
		}
	case env.Type == "enrollment" && r.AllowSelfSigned: // §7.1
		if !env.BodyDigestOK() {
			return nil, errf("digest", "body", "SHA-256(body) != body_digest")
		}
		body, err = DecodeBody(env.Type, env.Body, r.AllowNonFinite)
		if err != nil {
			return nil, err
		}
		bodyDone = true
		pubV, _ := body.Get("public_key")
		if KeyID(pubV.Raw) != env.KeyID {
			return nil, errf("key_mismatch", "key_id", "key_id is not the id of body.public_key")
		}
		if dev, _ := body.Get("device_id"); dev.S != env.Sender {
			return nil, errf("key_mismatch", "sender", "sender is not body.device_id")
		}
		pk, err := ParsePublicKey(pubV.Raw)
		if err != nil {
			return nil, errf("schema", "body.public_key", "%v", err)
		}
		if !VerifySig(pk, &env.Header, r.Channel, env.Sig) {
			return nil, errf("signature", "sig", "signature does not verify")
		}
	default:
		return nil, errf("unknown_key", "key_id", "no public key for %x", env.KeyID)
	}
	if err := r.fresh(env.TsMs); err != nil { // step 10
		return nil, err
	}
	rk := replayKey(env.Sender, env.ID)
	if r.seen[rk] { // step 11
		return nil, errf("replay", "id", "(sender, id) already accepted")
	}
	if !bodyDone { // step 12
		body, err = DecodeBody(env.Type, env.Body, r.AllowNonFinite)
		if err != nil {
			return nil, err
		}
	}
	r.remember(rk)
	if env.Type != "model_chunk" {
		return &Message{Header: env.Header, ID: env.ID, Type: env.Type, BodyRaw: env.Body, Body: body}, nil
	}
	return r.addChunk(env, body)
}

func (r *Receiver) remember(k string) {
	if r.seen == nil {
		r.seen = map[string]bool{}
	}
	r.seen[k] = true
}

func (r *Receiver) fresh(ts uint64) error {
	if r.Now == nil {
		return nil
	}
	now := r.Now()
	if now > ts && now-ts > r.MaxAgeMs {
		return errf("stale", "ts_ms", "message is %d ms old", now-ts)
	}
	if ts > now && ts-now > r.MaxSkewMs {
		return errf("stale", "ts_ms", "message is %d ms in the future", ts-now)
	}
	return nil
}

// addChunk is §9's reassembly (the bounds on open streams and bytes in
// flight left out, the size limit of a stream kept).
func (r *Receiver) addChunk(env *Envelope, body Value) (*Message, error) {
	if r.streams == nil {
		r.streams = map[string]*stream{}
		r.done = map[string]bool{}
	}
	key := replayKey(env.Sender, env.Chunk.Stream)
	if r.done[key] {
		return nil, nil
	}
	get := func(k string) Value { x, _ := body.Get(k); return x }
	inner, size, offset, digest, data := get("inner_type").S, get("size").U, get("offset").U, get("digest").Raw, get("data").Raw
	s := r.streams[key]
	if s == nil {
		if !typeAccepted(inner, r.TopicTypes) {
			return nil, errf("schema", "body.inner_type", "type %q not accepted on this topic", inner)
		}
		if size > MaxMessage {
			return nil, errf("limit", "body.size", "stream of %d bytes exceeds %d", size, MaxMessage)
		}
		s = &stream{first: env, inner: inner, size: size, digest: digest,
			parts: map[uint64][]byte{}, offset: map[uint64]uint64{}}
		r.streams[key] = s
	}
	f := s.first
	sameRound := (f.Round == nil) == (env.Round == nil) && (f.Round == nil || *f.Round == *env.Round)
	for _, c := range []struct {
		field string
		same  bool
	}{
		{"chunk.count", env.Chunk.Count == f.Chunk.Count},
		{"key_id", env.KeyID == f.KeyID},
		{"round", sameRound},
		{"body.inner_type", inner == s.inner},
		{"body.size", size == s.size},
		{"body.digest", bytes.Equal(digest, s.digest)},
	} {
		if !c.same {
			delete(r.streams, key)
			return nil, errf("chunk", c.field, "differs from earlier chunks of the stream; stream dropped")
		}
	}
	if _, dup := s.parts[env.Chunk.Index]; dup {
		return nil, nil // the same index under another id: the first copy stands
	}
	if offset > size || uint64(len(data)) > size-offset {
		delete(r.streams, key)
		return nil, errf("chunk", "body.offset", "slice ends past the body size %d", size)
	}
	s.parts[env.Chunk.Index], s.offset[env.Chunk.Index] = data, offset
	if env.Chunk.Index == 0 {
		s.first = env
	}
	if uint64(len(s.parts)) < f.Chunk.Count {
		return nil, nil
	}
	// Complete: closed and remembered whatever the checks below find.
	delete(r.streams, key)
	r.done[key] = true
	whole := make([]byte, 0, size)
	for i := uint64(0); i < f.Chunk.Count; i++ {
		if s.offset[i] != uint64(len(whole)) {
			return nil, errf("chunk", "body.offset", "chunk %d starts at %d, expected %d", i, s.offset[i], len(whole))
		}
		whole = append(whole, s.parts[i]...)
	}
	if uint64(len(whole)) != size || !bytes.Equal(sha256Of(whole), digest) {
		return nil, errf("chunk", "body.digest", "reassembled body does not match size and digest")
	}
	rk := replayKey(env.Sender, env.Chunk.Stream)
	if r.seen[rk] {
		return nil, errf("replay", "id", "stream id already accepted")
	}
	v, err := DecodeBody(inner, whole, r.AllowNonFinite)
	if err != nil {
		return nil, err
	}
	r.remember(rk)
	// The reassembled message: chunk 0's header, with the inner type, the stream
	// as id, the whole body's digest and no chunk.
	h := s.first.Header
	h.Type, h.ID, h.BodyDigest, h.Chunk = inner, env.Chunk.Stream, sha256.Sum256(whole), nil
	return &Message{Header: h, ID: env.Chunk.Stream, Type: inner, BodyRaw: whole, Body: v}, nil
}

func sha256Of(b []byte) []byte { s := sha256.Sum256(b); return s[:] }

// SplitBody cuts body into chunk bodies of at most sliceLen data bytes (§9),
// returning the model_chunk bodies in index order.
func SplitBody(inner string, body []byte, sliceLen int) ([][]byte, error) {
	if sliceLen < 1 || len(body) == 0 {
		return nil, fmt.Errorf("bad split")
	}
	digest := sha256.Sum256(body)
	var out [][]byte
	for off := 0; off < len(body); off += sliceLen {
		end := min(off+sliceLen, len(body))
		out = append(out, Marshal(MapOf(
			E("inner_type", Str(inner)),
			E("size", Uint(uint64(len(body)))),
			E("offset", Uint(uint64(off))),
			E("digest", Bin(digest[:])),
			E("data", Bin(body[off:end])),
		)))
	}
	if len(out) > MaxChunks {
		return nil, fmt.Errorf("%d chunks exceed %d", len(out), MaxChunks)
	}
	return out, nil
}
