package qflare

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

type vecKey struct {
	Alg          string   `json:"alg"`
	Seed         string   `json:"seed"`
	PublicKey    string   `json:"public_key"`
	KeyID        string   `json:"key_id"`
	KeyFile      *KeyFile `json:"key_file"`
	Ciphertext   string   `json:"ciphertext"`
	SharedSecret string   `json:"shared_secret"`
}

type vecChannel struct {
	Deployment string `json:"deployment"`
	Topic      string `json:"topic"`
}

type vecEnvelope struct {
	Name         string          `json:"name"`
	Channel      vecChannel      `json:"channel"`
	Header       json.RawMessage `json:"header"`
	BodyView     json.RawMessage `json:"body_view"`
	Body         string          `json:"body"`
	SigningBytes string          `json:"signing_bytes"`
	Sig          string          `json:"sig"`
	Envelope     string          `json:"envelope"`
}

type vecRejection struct {
	Name       string   `json:"name"`
	Envelope   string   `json:"envelope"`
	Reason     string   `json:"reason"`
	Field      string   `json:"field"`
	PrecededBy []string `json:"preceded_by"`
}

type vectors struct {
	ProtocolVersion int            `json:"protocol_version"`
	SigningKey      vecKey         `json:"signing_key"`
	DeviceKey       vecKey         `json:"device_key"`
	KEMKey          vecKey         `json:"kem_key"`
	Envelopes       []vecEnvelope  `json:"envelopes"`
	Rejections      []vecRejection `json:"rejections"`
	Accepted        []vecAccepted  `json:"accepted"`
	Receiver        vecReceiver    `json:"receiver"`
	EnrolmentToken  vecToken       `json:"enrolment_token"`
}

type vecToken struct {
	Token         string `json:"token"`
	Scope         string `json:"scope"`
	DeviceID      string `json:"device_id"`
	KeyID         string `json:"key_id"`
	MACKey        string `json:"mac_key"`
	TokenID       string `json:"token_id"`
	TokenMAC      string `json:"token_mac"`
	MACInput      string `json:"mac_input"`
	RotationInput string `json:"rotation_input"`
}

func vectorsPath() string {
	if p := os.Getenv("QFLARE_VECTORS"); p != "" {
		return p
	}
	return filepath.Join("..", "..", "..", "tests", "vectors", "envelopes.json")
}

func loadVectors(t *testing.T) *vectors {
	t.Helper()
	raw, err := os.ReadFile(vectorsPath())
	if err != nil {
		t.Fatalf("reading golden vectors: %v", err)
	}
	var v vectors
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("parsing golden vectors: %v", err)
	}
	if len(v.Envelopes) == 0 {
		t.Fatal("no envelopes in the golden vectors")
	}
	return &v
}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("bad hex: %v", err)
	}
	return b
}

func mustKey(t *testing.T, k vecKey) *SigningKey {
	t.Helper()
	sk, err := SigningKeyFromSeed(unhex(t, k.Seed))
	if err != nil {
		t.Fatal(err)
	}
	return sk
}

func firstDiff(a, b []byte) int {
	for i := 0; i < len(a) && i < len(b); i++ {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func assertBytes(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		i := firstDiff(got, want)
		t.Errorf("%s differs at byte %d (len got %d, want %d)\n got  ...%x\n want ...%x", what, i,
			len(got), len(want), got[i:min(i+24, len(got))], want[i:min(i+24, len(want))])
	}
}

func TestKeys(t *testing.T) {
	v := loadVectors(t)
	if v.ProtocolVersion != Version {
		t.Fatalf("protocol_version %d", v.ProtocolVersion)
	}
	sk := mustKey(t, v.SigningKey)
	assertBytes(t, "signing_key public key from seed", sk.PublicBytes(), unhex(t, v.SigningKey.PublicKey))
	id := sk.KeyID()
	if hex.EncodeToString(id[:]) != v.SigningKey.KeyID {
		t.Errorf("key_id %x, want %s", id, v.SigningKey.KeyID)
	}
	if v.SigningKey.KeyFile == nil {
		t.Fatal("no key_file")
	}
	if err := CheckKeyFile(v.SigningKey.KeyFile); err != nil {
		t.Errorf("key file: %v", err)
	}
	kf := v.SigningKey.KeyFile
	if kf.Alg != SigAlg || kf.KeyID != v.SigningKey.KeyID ||
		kf.PublicKey != base64.StdEncoding.EncodeToString(sk.PublicBytes()) ||
		kf.Seed != base64.StdEncoding.EncodeToString(sk.Seed[:]) {
		t.Errorf("key file fields disagree with the key")
	}
	// A public-only file and a tampered file.
	pubOnly := *kf
	pubOnly.Seed = ""
	if err := CheckKeyFile(&pubOnly); err != nil {
		t.Errorf("public-only key file: %v", err)
	}
	bad := *kf
	bad.Seed = base64.StdEncoding.EncodeToString(unhex(t, v.DeviceKey.Seed))
	if CheckKeyFile(&bad) == nil {
		t.Errorf("key file whose seed does not match its public key was accepted")
	}

	dk := mustKey(t, v.DeviceKey)
	assertBytes(t, "device_key public key from seed", dk.PublicBytes(), unhex(t, v.DeviceKey.PublicKey))

	kem, err := KEMPublicFromSeed(unhex(t, v.KEMKey.Seed))
	if err != nil {
		t.Fatal(err)
	}
	assertBytes(t, "ML-KEM-768 public key from seed", kem.EncapsulationKey().Bytes(), unhex(t, v.KEMKey.PublicKey))
	ss, err := kem.Decapsulate(unhex(t, v.KEMKey.Ciphertext))
	if err != nil {
		t.Fatal(err)
	}
	assertBytes(t, "ML-KEM-768 shared secret", ss, unhex(t, v.KEMKey.SharedSecret))
}

// keyFor picks the vector key whose key_id the header names.
func keyFor(t *testing.T, v *vectors, keyID [16]byte) *SigningKey {
	for _, k := range []vecKey{v.SigningKey, v.DeviceKey} {
		sk := mustKey(t, k)
		if sk.KeyID() == keyID {
			return sk
		}
	}
	t.Fatalf("no vector key has key_id %x", keyID)
	return nil
}

func TestEnvelopeVectors(t *testing.T) {
	v := loadVectors(t)
	for _, vec := range v.Envelopes {
		t.Run(vec.Name, func(t *testing.T) {
			hv, err := ParseJSON(vec.Header)
			if err != nil {
				t.Fatal(err)
			}
			h, err := HeaderFromView(hv)
			if err != nil {
				t.Fatal(err)
			}
			body, sig, envBytes := unhex(t, vec.Body), unhex(t, vec.Sig), unhex(t, vec.Envelope)

			// body: re-encoded from the JSON view of the body.
			bv, err := ParseJSON(vec.BodyView)
			if err != nil {
				t.Fatal(err)
			}
			bodyVal, err := BodyFromView(h.Type, bv)
			if err != nil {
				t.Fatal(err)
			}
			assertBytes(t, "body from body_view", Marshal(bodyVal), body)
			if sha256.Sum256(body) != h.BodyDigest {
				t.Errorf("body_digest is not SHA-256(body)")
			}

			// signing bytes and the envelope map.
			ch := Channel{vec.Channel.Deployment, vec.Channel.Topic}
			if ch != v.Receiver.channel() {
				t.Errorf("vector signed for %+v, received on %+v", ch, v.Receiver.channel())
			}
			assertBytes(t, "signing_bytes", SigningBytes(&h, ch), unhex(t, vec.SigningBytes))
			if sb := SigningBytes(&h, ch); sb[0] != 0x9d {
				t.Errorf("signing bytes start %#x, not 9d", sb[0])
			}
			env := &Envelope{Header: h, Body: body, Sig: sig}
			assertBytes(t, "envelope", env.Encode(), envBytes)

			// key_id and the signature.
			sk := keyFor(t, v, h.KeyID)
			if KeyID(sk.PublicBytes()) != h.KeyID {
				t.Errorf("key_id mismatch")
			}
			if len(sig) != SigSize {
				t.Errorf("sig is %d bytes", len(sig))
			}
			if !VerifySig(sk.Public, &h, ch, sig) {
				t.Errorf("recorded signature does not verify over the rebuilt signing bytes")
			}
			for _, pos := range []int{0, len(sig) / 2, len(sig) - 1} {
				flipped := bytes.Clone(sig)
				flipped[pos] ^= 0x01
				if VerifySig(sk.Public, &h, ch, flipped) {
					t.Errorf("signature with byte %d flipped still verifies", pos)
				}
			}
			other := h
			other.TsMs++
			if VerifySig(sk.Public, &other, ch, sig) {
				t.Errorf("signature verifies over altered header")
			}
			// The channel is signed: the same record read from elsewhere does not verify.
			for _, elsewhere := range []Channel{{ch.Deployment, ch.Topic + "x"}, {ch.Deployment + "x", ch.Topic}} {
				if VerifySig(sk.Public, &h, elsewhere, sig) {
					t.Errorf("signature verifies for %+v", elsewhere)
				}
			}

			// Parse the record back and re-encode it.
			parsed, err := ParseEnvelope(envBytes, MaxRecord, nil)
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			assertBytes(t, "signing bytes of parsed envelope", SigningBytes(&parsed.Header, ch), unhex(t, vec.SigningBytes))
			assertBytes(t, "re-encoded parsed envelope", parsed.Encode(), envBytes)
			if !parsed.BodyDigestOK() {
				t.Errorf("digest check failed")
			}

			// The typed body.
			dec, err := DecodeBody(h.Type, parsed.Body, false)
			if err != nil {
				t.Fatalf("body: %v", err)
			}
			if !dec.Equal(bodyVal) {
				t.Errorf("decoded body differs from body_view")
			}
			assertBytes(t, "re-encoded body", Marshal(dec), body)

			// The whole receive pipeline of §6.
			r := newReceiver(t, v)
			msg, err := r.Receive(envBytes)
			if err != nil {
				t.Fatalf("receive: %v", err)
			}
			if h.Type != "model_chunk" && (msg == nil || msg.ID != h.ID || msg.Type != h.Type) {
				t.Errorf("receiver returned %+v", msg)
			}
			if _, err := r.Receive(envBytes); err == nil || err.(*Error).Reason != "replay" {
				t.Errorf("second copy: %v, want replay", err)
			}
		})
	}
}

func findVec(t *testing.T, v *vectors, name string) vecEnvelope {
	for _, e := range v.Envelopes {
		if e.Name == name {
			return e
		}
	}
	t.Fatalf("no vector %q", name)
	return vecEnvelope{}
}

func TestSpecExample(t *testing.T) {
	v := loadVectors(t)
	hb := findVec(t, v, "heartbeat")
	sb := unhex(t, hb.SigningBytes)
	if len(sb) != 163 {
		t.Errorf("§4 says 163 signing bytes, got %d", len(sb))
	}
	prefix := unhex(t, "9daf71666c6172652e656e76656c6f706502ae71666c6172652d766563746f7273b6766563746f72732e71666c6172652e7265636f726473a9686561727462656174c41001977420dc0074da82c80d0e7c947c01")
	if !bytes.HasPrefix(sb, prefix) {
		t.Errorf("signing bytes do not start as in §4")
	}
	env := unhex(t, hb.Envelope)
	if !bytes.HasPrefix(env, unhex(t, "8ca17602a474797065a9686561727462656174a26964c410")) {
		t.Errorf("record does not start as in §4")
	}
	tail := append([]byte("\xa3sig"), 0xc5, 0x0c, 0xed)
	if !bytes.Equal(env[len(env)-SigSize-len(tail):len(env)-SigSize], tail) {
		t.Errorf("record does not end with \"sig\" -> c5 0c ed + 3309 bytes")
	}
	if !bytes.Contains(env, unhex(t, "a4626f6479c43b")) {
		t.Errorf("no \"body\" -> c4 3b")
	}
}

func TestBodies(t *testing.T) {
	v := loadVectors(t)

	hb, err := DecodeBody("heartbeat", unhex(t, findVec(t, v, "heartbeat").Body), false)
	if err != nil {
		t.Fatal(err)
	}
	dev, _ := hb.Get("device_id")
	seq, _ := hb.Get("seq")
	st, _ := hb.Get("state")
	m, _ := hb.Get("metrics")
	cpu, _ := m.Get("cpu")
	if dev.S != "dev-1" || seq.U != 42 || st.S != "training" || cpu.F != 0.5 {
		t.Errorf("heartbeat decoded as %+v", hb)
	}

	mu, err := DecodeBody("model_update", unhex(t, findVec(t, v, "model_update").Body), false)
	if err != nil {
		t.Fatal(err)
	}
	tv, _ := mu.Get("tensors")
	want := map[string][]float64{
		"conv.w": {0.5, -1.25, 2, 0},
		"conv.b": {1.5},
		"fc.w":   {1, -2, 3.5},
		"q":      {-128, 0, 127},
		"mask":   {0, 255},
	}
	dtypes := map[string]bool{}
	for i, x := range tv.Arr {
		tn, err := CheckTensor(x, joinIndex("body.tensors", i))
		if err != nil {
			t.Fatal(err)
		}
		dtypes[tn.DType] = true
		got := tn.Float64s()
		w := want[tn.Name]
		if len(got) != len(w) {
			t.Errorf("%s: %v, want %v", tn.Name, got, w)
			continue
		}
		for j := range w {
			if got[j] != w[j] {
				t.Errorf("%s: %v, want %v", tn.Name, got, w)
				break
			}
		}
	}
	if len(dtypes) != len(DTypeSize) {
		t.Errorf("model_update vector covers dtypes %v", dtypes)
	}

	en := findVec(t, v, "enrollment_self_signed")
	eb, err := DecodeBody("enrollment", unhex(t, en.Body), false)
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := eb.Get("public_key")
	kem, _ := eb.Get("kem_public_key")
	assertBytes(t, "enrolment public_key", pub.Raw, unhex(t, v.DeviceKey.PublicKey))
	assertBytes(t, "enrolment kem_public_key", kem.Raw, unhex(t, v.KEMKey.PublicKey))
	hv, _ := ParseJSON(en.Header)
	h, _ := HeaderFromView(hv)
	if KeyID(pub.Raw) != h.KeyID {
		t.Errorf("self-signed enrolment: key_id is not id(public_key)")
	}
	if d, _ := eb.Get("device_id"); d.S != h.Sender {
		t.Errorf("self-signed enrolment: device_id != sender")
	}
}

func TestChunkReassembly(t *testing.T) {
	v := loadVectors(t)
	whole := unhex(t, findVec(t, v, "model_update").Body)
	c0 := findVec(t, v, "model_chunk_0")
	c1 := findVec(t, v, "model_chunk_1")
	for _, order := range [][]vecEnvelope{{c0, c1}, {c1, c0}, {c1, c1, c0}} {
		r := newReceiver(t, v)
		var msg *Message
		for i, c := range order {
			m, err := r.Receive(unhex(t, c.Envelope))
			if i == 1 && len(order) == 3 {
				if err == nil || err.(*Error).Reason != "replay" {
					t.Errorf("duplicate chunk record: %v", err)
				}
				continue
			}
			if err != nil {
				t.Fatalf("chunk %s: %v", c.Name, err)
			}
			if m != nil {
				msg = m
			}
		}
		if msg == nil {
			t.Fatal("stream did not complete")
		}
		assertBytes(t, "reassembled body", msg.BodyRaw, whole)
		hv, _ := ParseJSON(c0.Header)
		h, _ := HeaderFromView(hv)
		if msg.ID != h.Chunk.Stream || msg.Type != "model_update" {
			t.Errorf("reassembled message id %x type %s", msg.ID, msg.Type)
		}
	}
	// The reference split: slices of equal length at index x slice_length.
	parts, err := SplitBody("model_update", whole, (len(whole)+1)/2)
	if err != nil {
		t.Fatal(err)
	}
	assertBytes(t, "chunk 0 body", parts[0], unhex(t, c0.Body))
	assertBytes(t, "chunk 1 body", parts[1], unhex(t, c1.Body))
}

// Go signs; Go verifies; hedged signatures of identical input differ.
func TestSignFresh(t *testing.T) {
	v := loadVectors(t)
	sk := mustKey(t, v.SigningKey)
	body := Marshal(MapOf(E("device_id", Str("dev-1")), E("seq", Uint(1)), E("state", Str("idle")),
		E("metrics", MapOf(E("cpu", Float(0.25))))))
	ts := uint64(1750000000000)
	h := Header{Type: "heartbeat", ID: NewUUIDv7(ts), Sender: "dev-1", TsMs: ts}
	ch := v.Receiver.channel()
	e1, err := sk.Sign(h, body, ch)
	if err != nil {
		t.Fatal(err)
	}
	e2, _ := sk.Sign(h, body, ch)
	if bytes.Equal(e1.Sig, e2.Sig) {
		t.Errorf("hedged signatures are identical")
	}
	r := newReceiver(t, v)
	if _, err := r.Receive(e1.Encode()); err != nil {
		t.Fatal(err)
	}
	// Another owner for the same key: key_mismatch on sender.
	h.Sender, h.ID = "dev-9", NewUUIDv7(ts)
	e3, _ := sk.Sign(h, body, ch)
	if _, err := r.Receive(e3.Encode()); err == nil || err.(*Error).Reason != "key_mismatch" || err.(*Error).Field != "sender" {
		t.Errorf("foreign sender: %v", err)
	}
	// An unknown key.
	dk := mustKey(t, v.DeviceKey)
	h.Sender, h.ID = "dev-1", NewUUIDv7(ts)
	e4, _ := dk.Sign(h, body, ch)
	if _, err := r.Receive(e4.Encode()); err == nil || err.(*Error).Reason != "unknown_key" {
		t.Errorf("unknown key: %v", err)
	}
	// Signed for another topic, or another deployment: the signature does not verify here.
	for _, elsewhere := range []Channel{{ch.Deployment, "other.topic"}, {"other-deployment", ch.Topic}} {
		h.ID = NewUUIDv7(ts)
		e5, _ := sk.Sign(h, body, elsewhere)
		if _, err := r.Receive(e5.Encode()); err == nil || err.(*Error).Reason != "signature" || err.(*Error).Field != "sig" {
			t.Errorf("signed for %+v: %v, want signature on sig", elsewhere, err)
		}
	}
}

// Receivers rebuild the signing bytes, so an envelope map in another key order
// or with longer-than-shortest forms still verifies (§1, §2, §4).
func TestLenientEnvelopeForms(t *testing.T) {
	v := loadVectors(t)
	hb := findVec(t, v, "model_update")
	env, err := ParseEnvelope(unhex(t, hb.Envelope), MaxRecord, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Rebuild with reversed key order and v as cc 02, round as cf.
	b := AppendMapHeader(nil, 12)
	b = append(AppendStr(b, "sig"), AppendBin(nil, env.Sig)...)
	b = append(AppendStr(b, "sig_alg"), AppendStr(nil, env.SigAlg)...)
	b = append(AppendStr(b, "chunk"), 0xc0)
	b = append(AppendStr(b, "body"), AppendBin(nil, env.Body)...)
	b = append(AppendStr(b, "body_digest"), AppendBin(nil, env.BodyDigest[:])...)
	b = append(AppendStr(b, "round"), 0xcf, 0, 0, 0, 0, 0, 0, 0, byte(*env.Round))
	b = append(AppendStr(b, "ts_ms"), AppendUint(nil, env.TsMs)...)
	b = append(AppendStr(b, "key_id"), AppendBin(nil, env.KeyID[:])...)
	b = append(AppendStr(b, "sender"), 0xd9, byte(len(env.Sender)))
	b = append(b, env.Sender...)
	b = append(AppendStr(b, "id"), AppendBin(nil, env.ID[:])...)
	b = append(AppendStr(b, "type"), AppendStr(nil, env.Type)...)
	b = append(AppendStr(b, "v"), 0xcc, byte(env.V))
	r := newReceiver(t, v)
	if _, err := r.Receive(b); err != nil {
		t.Fatalf("non-canonical but valid envelope refused: %v", err)
	}
}
