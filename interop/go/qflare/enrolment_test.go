package qflare

import (
	"testing"

	"github.com/cloudflare/circl/sign/mldsa/mldsa65"
)

// The token MAC and rotation binding of the golden vectors, recomputed here (§7, "Enrolment").
func TestEnrolmentTokenMACAndRotationBinding(t *testing.T) {
	v := loadVectors(t)
	tok := v.EnrolmentToken
	if tok.Token == "" {
		t.Fatal("no enrolment_token in the golden vectors")
	}
	kid := unhex(t, tok.KeyID)
	key := TokenKey(tok.Token)
	id := TokenID(key)
	assertBytes(t, "mac_key", key[:], unhex(t, tok.MACKey))
	assertBytes(t, "token_id", id[:], unhex(t, tok.TokenID))
	assertBytes(t, "mac_input", Binding(TokenMACDomain, tok.Scope, tok.DeviceID, kid), unhex(t, tok.MACInput))
	assertBytes(t, "token_mac", TokenMAC(key, tok.Scope, tok.DeviceID, kid), unhex(t, tok.TokenMAC))
	rot := Binding(RotationDomain, tok.Scope, tok.DeviceID, kid)
	assertBytes(t, "rotation_input", rot, unhex(t, tok.RotationInput))
	current := mustKey(t, v.SigningKey)
	proof, err := current.RotationProof(tok.Scope, tok.DeviceID, kid)
	if err != nil {
		t.Fatal(err)
	}
	if !mldsa65.Verify(current.Public, rot, nil, proof) {
		t.Error("rotation proof does not verify over the rotation binding")
	}
}
