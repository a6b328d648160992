package qflare

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"

	"github.com/cloudflare/circl/sign/mldsa/mldsa65"
)

// Domains of the enrolment token MAC and the key-rotation proof (§7, "Enrolment").
const (
	TokenMACDomain = "qflare.enrolment-token.v1"
	RotationDomain = "qflare.key-rotation.v1"
)

// Binding is what a token MAC or a rotation proof covers: domain, scope (the
// deployment), device id and key id, each as a 2-byte big-endian length and its bytes.
func Binding(domain, scope, deviceID string, keyID []byte) []byte {
	var out []byte
	for _, p := range [][]byte{[]byte(domain), []byte(scope), []byte(deviceID), keyID} {
		out = binary.BigEndian.AppendUint16(out, uint16(len(p)))
		out = append(out, p...)
	}
	return out
}

// TokenKey is the MAC key of an enrolment token: SHA-256 of its UTF-8 bytes.
func TokenKey(token string) [32]byte { return sha256.Sum256([]byte(token)) }

// TokenID names a token's MAC key: the first 16 bytes of SHA-256 over the key.
func TokenID(key [32]byte) [16]byte {
	sum := sha256.Sum256(key[:])
	var id [16]byte
	copy(id[:], sum[:16])
	return id
}

// TokenMAC is HMAC-SHA256 under the token's key over the binding of the device and key id.
func TokenMAC(key [32]byte, scope, deviceID string, keyID []byte) []byte {
	m := hmac.New(sha256.New, key[:])
	m.Write(Binding(TokenMACDomain, scope, deviceID, keyID))
	return m.Sum(nil)
}

// RotationProof is the current key's signature over the new key id.
func (k *SigningKey) RotationProof(scope, deviceID string, newKeyID []byte) ([]byte, error) {
	sig := make([]byte, mldsa65.SignatureSize)
	err := mldsa65.SignTo(k.Priv, Binding(RotationDomain, scope, deviceID, newKeyID), nil, true, sig)
	return sig, err
}
