package qflare

import (
	"encoding/hex"
	"testing"
)

// The rejection and acceptance cases of the golden vectors (§13), received
// as the vectors' "receiver" object says.

type vecAccepted struct {
	Name    string   `json:"name"`
	Records []string `json:"records"`
	Expect  struct {
		Type          string `json:"type"`
		ID            string `json:"id"`
		TsMs          uint64 `json:"ts_ms"`
		CanonicalBody string `json:"canonical_body"`
	} `json:"expect"`
}

type vecReceiver struct {
	Deployment string `json:"deployment"`
	Topic      string `json:"topic"`
	NowMs      uint64 `json:"now_ms"`
	MaxAgeMs   uint64 `json:"max_age_ms"`
	MaxSkewMs  uint64 `json:"max_skew_ms"`
	KnownKeys  []struct {
		Owner string `json:"owner"`
		Key   string `json:"key"`
	} `json:"known_keys"`
	SelfSigned  []string `json:"self_signed"`
	CheckFinite bool     `json:"check_finite"`
}

func (rc vecReceiver) channel() Channel { return Channel{rc.Deployment, rc.Topic} }

// newReceiver is the receiver of the vectors' "receiver" object (§13).
func newReceiver(t *testing.T, v *vectors) *Receiver {
	rc := v.Receiver
	ring := NewKeyRing()
	for _, k := range rc.KnownKeys {
		pub := map[string]string{"signing_key": v.SigningKey.PublicKey, "device_key": v.DeviceKey.PublicKey}[k.Key]
		if err := ring.Add(k.Owner, unhex(t, pub)); err != nil {
			t.Fatal(err)
		}
	}
	if len(rc.SelfSigned) != 1 || rc.SelfSigned[0] != "enrollment" || rc.NowMs == 0 {
		t.Fatalf("unexpected receiver %+v", rc)
	}
	return &Receiver{Keys: ring, Channel: rc.channel(), AllowSelfSigned: true, AllowNonFinite: !rc.CheckFinite,
		Now: func() uint64 { return rc.NowMs }, MaxAgeMs: rc.MaxAgeMs, MaxSkewMs: rc.MaxSkewMs}
}

func TestRejections(t *testing.T) {
	v := loadVectors(t)
	if len(v.Rejections) == 0 {
		t.Fatal("no rejections")
	}
	for _, rj := range v.Rejections {
		t.Run(rj.Name, func(t *testing.T) {
			r := newReceiver(t, v)
			for _, name := range rj.PrecededBy {
				if _, err := r.Receive(unhex(t, findVec(t, v, name).Envelope)); err != nil {
					t.Fatalf("preceding %s: %v", name, err)
				}
			}
			_, err := r.Receive(unhex(t, rj.Envelope))
			if err == nil {
				t.Fatal("accepted")
			}
			e := err.(*Error)
			if e.Reason != rj.Reason || e.Field != rj.Field {
				t.Errorf("got %s/%s (%s), want %s/%s", e.Reason, e.Field, e.Msg, rj.Reason, rj.Field)
			}
		})
	}
}

// Records no conforming encoder writes, which receivers must still accept (§1, §7, §9).
func TestAccepted(t *testing.T) {
	v := loadVectors(t)
	if len(v.Accepted) == 0 {
		t.Fatal("no accepted cases")
	}
	for _, ac := range v.Accepted {
		t.Run(ac.Name, func(t *testing.T) {
			r := newReceiver(t, v)
			var msg *Message
			for i, rec := range ac.Records {
				m, err := r.Receive(unhex(t, rec))
				if err != nil {
					t.Fatalf("record %d: %v", i, err)
				}
				if (m != nil) != (i == len(ac.Records)-1) {
					t.Fatalf("record %d: message %v", i, m)
				}
				msg = m
			}
			if msg.Type != ac.Expect.Type || msg.Header.TsMs != ac.Expect.TsMs {
				t.Errorf("got type %s ts_ms %d", msg.Type, msg.Header.TsMs)
			}
			if ac.Expect.ID != "" && hex.EncodeToString(msg.ID[:]) != ac.Expect.ID {
				t.Errorf("id %x, want %s", msg.ID, ac.Expect.ID)
			}
			body, err := EncodeBody(msg.Type, msg.Body)
			if err != nil {
				t.Fatal(err)
			}
			assertBytes(t, "canonical body", body, unhex(t, ac.Expect.CanonicalBody))
		})
	}
}
