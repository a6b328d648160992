package qflare

import (
	"bytes"
	"crypto/mlkem"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"

	"github.com/cloudflare/circl/sign/mldsa/mldsa65"
)

// SigningKey is an ML-DSA-65 key derived from its 32-byte FIPS 204 seed xi (§5).
type SigningKey struct {
	Seed   [32]byte
	Public *mldsa65.PublicKey
	Priv   *mldsa65.PrivateKey
}

// SigningKeyFromSeed runs ML-DSA.KeyGen_internal on the seed.
func SigningKeyFromSeed(seed []byte) (*SigningKey, error) {
	if len(seed) != mldsa65.SeedSize {
		return nil, fmt.Errorf("ML-DSA-65 seed must be %d bytes, got %d", mldsa65.SeedSize, len(seed))
	}
	k := &SigningKey{}
	copy(k.Seed[:], seed)
	k.Public, k.Priv = mldsa65.NewKeyFromSeed(&k.Seed)
	return k, nil
}

// PublicBytes is the 1952-byte raw public key.
func (k *SigningKey) PublicBytes() []byte { return k.Public.Bytes() }

// KeyID is §5's key_id of the public key.
func (k *SigningKey) KeyID() [16]byte { return KeyID(k.PublicBytes()) }

// ParsePublicKey reads a raw 1952-byte ML-DSA-65 public key.
func ParsePublicKey(raw []byte) (*mldsa65.PublicKey, error) {
	if len(raw) != mldsa65.PublicKeySize {
		return nil, fmt.Errorf("ML-DSA-65 public key must be %d bytes, got %d", mldsa65.PublicKeySize, len(raw))
	}
	pk := new(mldsa65.PublicKey)
	if err := pk.UnmarshalBinary(raw); err != nil {
		return nil, err
	}
	return pk, nil
}

// VerifySig checks sig over the signing bytes of h for ch: pure ML-DSA-65, empty context (§4).
func VerifySig(pk *mldsa65.PublicKey, h *Header, ch Channel, sig []byte) bool {
	return mldsa65.Verify(pk, SigningBytes(h, ch), nil, sig)
}

// Sign fills in v, key_id, body_digest and sig_alg, signs the header for ch
// (the deployment and topic the record will be produced to) with a hedged
// signature and returns the envelope.
func (k *SigningKey) Sign(h Header, body []byte, ch Channel) (*Envelope, error) {
	h.V = Version
	h.KeyID = k.KeyID()
	h.BodyDigest = sha256.Sum256(body)
	h.SigAlg = SigAlg
	sig := make([]byte, mldsa65.SignatureSize)
	if err := mldsa65.SignTo(k.Priv, SigningBytes(&h, ch), nil, true, sig); err != nil {
		return nil, err
	}
	return &Envelope{Header: h, Body: body, Sig: sig}, nil
}

// KEMPublicFromSeed derives the ML-KEM-768 encapsulation key from the 64-byte d||z seed (§5).
func KEMPublicFromSeed(seed []byte) (*mlkem.DecapsulationKey768, error) {
	return mlkem.NewDecapsulationKey768(seed)
}

// KeyFile is the JSON key file of §5.
type KeyFile struct {
	Format    string `json:"format"`
	Version   int    `json:"version"`
	Alg       string `json:"alg"`
	KeyID     string `json:"key_id"`
	PublicKey string `json:"public_key"`
	Seed      string `json:"seed,omitempty"`
	CreatedMs int64  `json:"created_ms"`
}

// CheckKeyFile validates a key file as §5 requires of readers (mode bits aside).
func CheckKeyFile(f *KeyFile) error {
	if f.Format != "qflare-key" || f.Version != 1 {
		return fmt.Errorf("not a qflare-key v1 file")
	}
	pub, err := base64.StdEncoding.Strict().DecodeString(f.PublicKey)
	if err != nil {
		return fmt.Errorf("public_key: %w", err)
	}
	switch f.Alg {
	case SigAlg:
		if len(pub) != PublicKeySize {
			return fmt.Errorf("public_key is %d bytes", len(pub))
		}
	case "ML-KEM-768":
		if len(pub) != KEMPublicSize {
			return fmt.Errorf("public_key is %d bytes", len(pub))
		}
	default:
		return fmt.Errorf("unknown alg %q", f.Alg)
	}
	id := KeyID(pub)
	if f.KeyID != hex.EncodeToString(id[:]) {
		return fmt.Errorf("key_id %s does not match public key (%x)", f.KeyID, id)
	}
	if f.Seed == "" {
		return nil
	}
	seed, err := base64.StdEncoding.Strict().DecodeString(f.Seed)
	if err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	var derived []byte
	if f.Alg == SigAlg {
		k, err := SigningKeyFromSeed(seed)
		if err != nil {
			return err
		}
		derived = k.PublicBytes()
	} else {
		dk, err := KEMPublicFromSeed(seed)
		if err != nil {
			return err
		}
		derived = dk.EncapsulationKey().Bytes()
	}
	if !bytes.Equal(derived, pub) {
		return fmt.Errorf("public key does not match the seed")
	}
	return nil
}
