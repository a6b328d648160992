// Command qflare-verify signs fresh QFLARE v1 envelopes with the golden
// vector keys (sign) and checks envelopes made elsewhere (verify).
//
//	qflare-verify sign   [-vectors PATH] [-out FILE]
//	qflare-verify verify [-vectors PATH] [-owner NAME] [-device-owner NAME] [FILE]
//
// sign writes one JSON document: the signer and device owners and public
// keys, and a list of envelopes (hex). verify reads hex envelopes, one per
// line (or the "envelopes" of a sign document), and reports each verdict.
package main

import (
	"bufio"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"qflare.dev/interop/qflare"
)

const defaultVectors = "../../tests/vectors/envelopes.json"

type keyJSON struct {
	Alg          string `json:"alg"`
	Seed         string `json:"seed"`
	PublicKey    string `json:"public_key"`
	Ciphertext   string `json:"ciphertext"`
	SharedSecret string `json:"shared_secret"`
}

type vectorKeys struct {
	SigningKey keyJSON `json:"signing_key"`
	DeviceKey  keyJSON `json:"device_key"`
	KEMKey     keyJSON `json:"kem_key"`
}

type party struct {
	Owner     string `json:"owner"`
	PublicKey string `json:"public_key"`
	KeyID     string `json:"key_id"`
}

type outEnvelope struct {
	Name     string `json:"name"`
	Type     string `json:"type"`
	ID       string `json:"id"`
	Sender   string `json:"sender"`
	Body     string `json:"body"`
	Envelope string `json:"envelope"`
}

type channelJSON struct {
	Deployment string `json:"deployment"`
	Topic      string `json:"topic"`
}

func (c channelJSON) channel() qflare.Channel {
	return qflare.Channel{Deployment: c.Deployment, Topic: c.Topic}
}

type signOutput struct {
	// Channel is what every envelope is signed for; a receiver must read them as from there.
	Channel   channelJSON   `json:"channel"`
	Signer    party         `json:"signer"`
	Device    party         `json:"device"`
	Stream    string        `json:"stream"`
	Envelopes []outEnvelope `json:"envelopes"`
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "sign":
		err = cmdSign(os.Args[2:])
	case "verify":
		err = cmdVerify(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "qflare-verify:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: qflare-verify sign|verify [flags]")
	os.Exit(2)
}

func loadKeys(path string) (*vectorKeys, *qflare.SigningKey, *qflare.SigningKey, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, nil, err
	}
	var vk vectorKeys
	if err := json.Unmarshal(raw, &vk); err != nil {
		return nil, nil, nil, err
	}
	keys := make([]*qflare.SigningKey, 2)
	for i, k := range []keyJSON{vk.SigningKey, vk.DeviceKey} {
		seed, err := hex.DecodeString(k.Seed)
		if err != nil {
			return nil, nil, nil, err
		}
		if keys[i], err = qflare.SigningKeyFromSeed(seed); err != nil {
			return nil, nil, nil, err
		}
		if hex.EncodeToString(keys[i].PublicBytes()) != k.PublicKey {
			return nil, nil, nil, fmt.Errorf("public key derived from seed %d differs from the vectors", i)
		}
	}
	return &vk, keys[0], keys[1], nil
}

func partyOf(owner string, k *qflare.SigningKey) party {
	id := k.KeyID()
	return party{owner, hex.EncodeToString(k.PublicBytes()), hex.EncodeToString(id[:])}
}

func tensor(name, dtype string, shape []uint64, data []byte) qflare.Value {
	s := qflare.Array()
	s.Arr = []qflare.Value{}
	for _, d := range shape {
		s.Arr = append(s.Arr, qflare.Uint(d))
	}
	return qflare.MapOf(qflare.E("name", qflare.Str(name)), qflare.E("dtype", qflare.Str(dtype)),
		qflare.E("shape", s), qflare.E("data", qflare.Bin(data)))
}

func cmdSign(args []string) error {
	fs := flag.NewFlagSet("sign", flag.ExitOnError)
	vectors := fs.String("vectors", defaultVectors, "golden vectors file (for the key seeds)")
	out := fs.String("out", "-", "output file, - for stdout")
	owner := fs.String("owner", "go-dev-1", "sender signing with signing_key")
	devOwner := fs.String("device-owner", "go-dev-2", "sender of the self-signed enrolment (device_key)")
	deployment := fs.String("deployment", "go-interop", "deployment id every signature is bound to")
	topic := fs.String("topic", "go.qflare.records", "topic every signature is bound to")
	_ = fs.Parse(args)
	ch := qflare.Channel{Deployment: *deployment, Topic: *topic}

	vk, sk, dk, err := loadKeys(*vectors)
	if err != nil {
		return err
	}
	kemPub, err := hex.DecodeString(vk.KEMKey.PublicKey)
	if err != nil {
		return err
	}
	now := uint64(time.Now().UnixMilli())
	res := signOutput{Channel: channelJSON{ch.Deployment, ch.Topic}, Signer: partyOf(*owner, sk), Device: partyOf(*devOwner, dk)}
	add := func(name string, k *qflare.SigningKey, h qflare.Header, body []byte) error {
		env, err := k.Sign(h, body, ch)
		if err != nil {
			return err
		}
		res.Envelopes = append(res.Envelopes, outEnvelope{name, h.Type, hex.EncodeToString(h.ID[:]), h.Sender,
			hex.EncodeToString(body), hex.EncodeToString(env.Encode())})
		return nil
	}
	hdr := func(typ, sender string, round *uint64) qflare.Header {
		return qflare.Header{Type: typ, ID: qflare.NewUUIDv7(now), Sender: sender, TsMs: now, Round: round}
	}

	heartbeat, err := qflare.EncodeBody("heartbeat", qflare.MapOf(
		qflare.E("device_id", qflare.Str(*owner)), qflare.E("seq", qflare.Uint(300)),
		qflare.E("state", qflare.Str("uploading")),
		qflare.E("metrics", qflare.MapOf(qflare.E("cpu", qflare.Float(0.75)), qflare.E("mem", qflare.Float(1))))))
	if err != nil {
		return err
	}
	if err := add("heartbeat", sk, hdr("heartbeat", *owner, nil), heartbeat); err != nil {
		return err
	}

	update, err := qflare.EncodeBody("model_update", qflare.MapOf(
		qflare.E("job_id", qflare.Str("job-go")), qflare.E("round", qflare.Uint(3)),
		qflare.E("device_id", qflare.Str(*owner)), qflare.E("base_version", qflare.Uint(2)),
		qflare.E("num_examples", qflare.Uint(70000)),
		qflare.E("tensors", qflare.Array(
			tensor("w", "<f4", []uint64{2, 2}, []byte{0, 0, 0, 0x3f, 0, 0, 0xa0, 0xbf, 0, 0, 0, 0x40, 0, 0, 0, 0}),
			tensor("b", "<f2", []uint64{1}, []byte{0x00, 0x3e}),
			tensor("e", "bf16", []uint64{3}, []byte{0x80, 0x3f, 0x00, 0xc0, 0x60, 0x40}),
			tensor("q", "|i1", []uint64{3}, []byte{0x80, 0x00, 0x7f}),
			tensor("m", "|u1", []uint64{1, 2}, []byte{0x00, 0xff}),
			tensor("s", "<f4", []uint64{}, []byte{0, 0, 0x80, 0x3f}),
		)),
		qflare.E("metrics", qflare.MapOf(qflare.E("loss", qflare.Float(0.0625)), qflare.E("acc", qflare.Float(0.875))))))
	if err != nil {
		return err
	}
	if err := add("model_update", sk, hdr("model_update", *owner, qflare.RoundPtr(3)), update); err != nil {
		return err
	}

	// The token never travels: its id and a MAC over the scope, device id and key id do (§7).
	// The proof shows a rotation from the signer's key to the device key.
	tokenKey := qflare.TokenKey("go-token")
	tokenID, newKeyID := qflare.TokenID(tokenKey), qflare.KeyID(dk.PublicBytes())
	proof, err := sk.RotationProof("go.", *devOwner, newKeyID[:])
	if err != nil {
		return err
	}
	enrol, err := qflare.EncodeBody("enrollment", qflare.MapOf(
		qflare.E("device_id", qflare.Str(*devOwner)), qflare.E("public_key", qflare.Bin(dk.PublicBytes())),
		qflare.E("sig_alg", qflare.Str(qflare.SigAlg)), qflare.E("kem_public_key", qflare.Bin(kemPub)),
		qflare.E("token_id", qflare.Bin(tokenID[:])),
		qflare.E("token_mac", qflare.Bin(qflare.TokenMAC(tokenKey, "go.", *devOwner, newKeyID[:]))),
		qflare.E("rotation_proof", qflare.Bin(proof)),
		// The dataset size the device declares (§7.1): the most its updates may claim.
		qflare.E("labels", qflare.MapOf(
			qflare.E("qflare.num_examples", qflare.Str("70000")), qflare.E("site", qflare.Str("go"))))))
	if err != nil {
		return err
	}
	if err := add("enrollment", dk, hdr("enrollment", *devOwner, nil), enrol); err != nil {
		return err
	}

	audit, err := qflare.EncodeBody("audit_event", qflare.MapOf(
		qflare.E("event", qflare.Str("interop.check")), qflare.E("severity", qflare.Str("info")),
		qflare.E("source", qflare.Str(*owner)), qflare.E("reason", qflare.Str("written by the Go client")),
		qflare.E("subject", qflare.Nil()), qflare.E("ref_id", qflare.Bin(res.envID(0))),
		qflare.E("detail", qflare.MapOf(qflare.E("n", qflare.Uint(3)), qflare.E("ok", qflare.Bool(true)),
			qflare.E("none", qflare.Nil()), qflare.E("ratio", qflare.Float(0.5)), qflare.E("lang", qflare.Str("go"))))))
	if err != nil {
		return err
	}
	if err := add("audit_event", sk, hdr("audit_event", *owner, nil), audit); err != nil {
		return err
	}

	// The registry's answer to the enrolment above (signed here with the signer's key, §13).
	devKeyID := qflare.KeyID(dk.PublicBytes())
	answer, err := qflare.EncodeBody("enrollment_result", qflare.MapOf(
		qflare.E("device_id", qflare.Str(*devOwner)), qflare.E("enrollment_id", qflare.Bin(res.envID(2))),
		qflare.E("key_id", qflare.Bin(devKeyID[:])), qflare.E("status", qflare.Str("accepted")),
		qflare.E("reason", qflare.Str("new")), qflare.E("field", qflare.Nil()),
		qflare.E("message", qflare.Str("enrolled by the Go client's registry"))))
	if err != nil {
		return err
	}
	if err := add("enrollment_result", sk, hdr("enrollment_result", *owner, nil), answer); err != nil {
		return err
	}

	// The model update again, as a two-chunk stream. Bodies are encoded by
	// EncodeBody: body keys in listed order, free-form maps sorted (§7).
	parts, err := qflare.SplitBody("model_update", update, (len(update)+1)/2)
	if err != nil {
		return err
	}
	stream := qflare.NewUUIDv7(now)
	res.Stream = hex.EncodeToString(stream[:])
	for i, p := range parts {
		h := hdr("model_chunk", *owner, qflare.RoundPtr(3))
		h.Chunk = &qflare.Chunk{Stream: stream, Index: uint64(i), Count: uint64(len(parts))}
		if err := add(fmt.Sprintf("model_chunk_%d", i), sk, h, p); err != nil {
			return err
		}
	}

	// Check everything with the Go receiver before handing it out.
	ring := qflare.NewKeyRing()
	if err := ring.Add(*owner, sk.PublicBytes()); err != nil {
		return err
	}
	r := &qflare.Receiver{Keys: ring, Channel: ch, AllowSelfSigned: true}
	for _, e := range res.Envelopes {
		raw, _ := hex.DecodeString(e.Envelope)
		if _, err := r.Receive(raw); err != nil {
			return fmt.Errorf("self-check of %s: %w", e.Name, err)
		}
	}

	doc, err := json.MarshalIndent(res, "", " ")
	if err != nil {
		return err
	}
	doc = append(doc, '\n')
	if *out == "-" {
		_, err = os.Stdout.Write(doc)
		return err
	}
	return os.WriteFile(*out, doc, 0o644)
}

func (s *signOutput) envID(i int) []byte {
	b, _ := hex.DecodeString(s.Envelopes[i].ID)
	return b
}

func cmdVerify(args []string) error {
	fs := flag.NewFlagSet("verify", flag.ExitOnError)
	vectors := fs.String("vectors", defaultVectors, "golden vectors file (for the keys)")
	owner := fs.String("owner", "dev-1", "owner of signing_key")
	deployment := fs.String("deployment", "", "deployment id the records were signed for (default: the input's channel)")
	topic := fs.String("topic", "", "topic the records were read from (default: the input's channel)")
	_ = fs.Parse(args)

	_, sk, _, err := loadKeys(*vectors)
	if err != nil {
		return err
	}
	var in io.Reader = os.Stdin
	if fs.NArg() > 0 && fs.Arg(0) != "-" {
		f, err := os.Open(fs.Arg(0))
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	}
	data, err := io.ReadAll(in)
	if err != nil {
		return err
	}
	var records []string
	var doc signOutput
	if json.Unmarshal(data, &doc) == nil && len(doc.Envelopes) > 0 {
		*owner = doc.Signer.Owner
		if *deployment == "" {
			*deployment = doc.Channel.Deployment
		}
		if *topic == "" {
			*topic = doc.Channel.Topic
		}
		for _, e := range doc.Envelopes {
			records = append(records, e.Envelope)
		}
	} else {
		sc := bufio.NewScanner(strings.NewReader(string(data)))
		sc.Buffer(nil, 64<<20)
		for sc.Scan() {
			if line := strings.TrimSpace(sc.Text()); line != "" {
				records = append(records, line)
			}
		}
	}
	ring := qflare.NewKeyRing()
	if err := ring.Add(*owner, sk.PublicBytes()); err != nil {
		return err
	}
	r := &qflare.Receiver{Keys: ring, Channel: qflare.Channel{Deployment: *deployment, Topic: *topic}, AllowSelfSigned: true}
	failed := 0
	for i, h := range records {
		raw, err := hex.DecodeString(h)
		if err != nil {
			return fmt.Errorf("record %d: %w", i, err)
		}
		msg, err := r.Receive(raw)
		switch {
		case err != nil:
			failed++
			fmt.Printf("record %d: REJECTED %v\n", i, err)
		case msg == nil:
			fmt.Printf("record %d: ok (chunk held)\n", i)
		default:
			fmt.Printf("record %d: ok %s id=%x sender=%s\n", i, msg.Type, msg.ID, msg.Header.Sender)
		}
	}
	fmt.Printf("%d passed, %d failed\n", len(records)-failed, failed)
	if failed > 0 {
		return fmt.Errorf("%d record(s) rejected", failed)
	}
	return nil
}
