package qflare

import (
	"bytes"
	"encoding/hex"
	"math"
	"strings"
	"testing"
)

func TestShortestForms(t *testing.T) {
	cases := []struct {
		v    Value
		want string
	}{
		{Uint(0), "00"}, {Uint(127), "7f"}, {Uint(128), "cc80"}, {Uint(255), "ccff"},
		{Uint(256), "cd0100"}, {Uint(65535), "cdffff"}, {Uint(65536), "ce00010000"},
		{Uint(math.MaxUint32), "ceffffffff"}, {Uint(1 << 32), "cf0000000100000000"},
		{Uint(1750000000000), "cf000001977420dc00"}, {Uint(math.MaxUint64), "cfffffffffffffffff"},
		{Int(-1), "ff"}, {Int(-32), "e0"}, {Int(-33), "d0df"}, {Int(-128), "d080"},
		{Int(-129), "d1ff7f"}, {Int(-32768), "d18000"}, {Int(-32769), "d2ffff7fff"},
		{Int(math.MinInt32 - 1), "d3ffffffff7fffffff"}, {Int(math.MinInt64), "d38000000000000000"},
		{Float(0.5), "cb3fe0000000000000"}, {Value{Kind: KFloat, F: 0.5, F32: true}, "cb3fe0000000000000"},
		{Nil(), "c0"}, {Bool(false), "c2"}, {Bool(true), "c3"},
		{Str(""), "a0"}, {Str(strings.Repeat("x", 31)), "bf" + strings.Repeat("78", 31)},
		{Str(strings.Repeat("x", 32)), "d920" + strings.Repeat("78", 32)},
		{Bin(nil), "c400"}, {Bin([]byte{1}), "c40101"},
		{Array(), "90"}, {MapOf(), "80"},
	}
	for _, c := range cases {
		if got := hex.EncodeToString(Marshal(c.v)); got != c.want {
			t.Errorf("%+v: got %s want %s", c.v, got, c.want)
		}
		back, err := Unmarshal(Marshal(c.v), BodyLimits, "body")
		if err != nil {
			t.Errorf("%s: %v", c.want, err)
		} else if hex.EncodeToString(Marshal(back)) != c.want {
			t.Errorf("%s does not round-trip", c.want)
		}
	}
	if got := len(Marshal(Str(strings.Repeat("x", 256)))); got != 256+3 {
		t.Errorf("str 256 -> %d bytes", got)
	}
	if b := Marshal(Bin(make([]byte, 3309))); !bytes.HasPrefix(b, []byte{0xc5, 0x0c, 0xed}) {
		t.Errorf("bin 3309 header %x", b[:3])
	}
	arr := Array(make([]Value, 16)...)
	if b := Marshal(arr); b[0] != 0xdc {
		t.Errorf("array 16 header %x", b[0])
	}
}

func TestRefusals(t *testing.T) {
	cases := map[string]struct{ hex, reason string }{
		"c1":             {"c1", "schema"},
		"ext fixext1":    {"d40100", "schema"},
		"ext8":           {"c70101aa", "schema"},
		"trailing":       {"0000", "schema"},
		"truncated":      {"cd01", "schema"},
		"truncated str":  {"a3616263"[:6], "schema"},
		"int map key":    {"810101", "schema"},
		"duplicate key":  {"82a16101a16102", "schema"},
		"bad utf8":       {"a1ff", "schema"},
		"bin past end":   {"c5ffff00", "schema"},
		"bin over limit": {"c6ffffffff00", "limit"},
		"array past end": {"ddffff000000", "limit"},
		"map past end":   {"df00000100", "schema"},
		"map over limit": {"df00010000", "limit"},
		"str over limit": {"db00010001", "limit"},
	}
	for name, c := range cases {
		raw, _ := hex.DecodeString(c.hex)
		_, err := Unmarshal(raw, BodyLimits, "body")
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if e := err.(*Error); e.Reason != c.reason {
			t.Errorf("%s: %v, want %s", name, err, c.reason)
		}
	}
	// Depth: 16 nested arrays pass, 17 do not.
	deep := func(n int) []byte { return append(bytes.Repeat([]byte{0x91}, n-1), 0x90) }
	if _, err := Unmarshal(deep(16), BodyLimits, "body"); err != nil {
		t.Errorf("depth 16: %v", err)
	}
	if _, err := Unmarshal(deep(17), BodyLimits, "body"); err == nil || err.(*Error).Reason != "limit" {
		t.Errorf("depth 17: %v", err)
	}
	// Non-shortest forms are accepted by the decoder.
	for _, h := range []string{"cc01", "d000", "d9016a", "dc0000", "de0000", "ca3f000000"} {
		raw, _ := hex.DecodeString(h)
		if _, err := Unmarshal(raw, BodyLimits, "body"); err != nil {
			t.Errorf("%s: %v", h, err)
		}
	}
}

func TestTensorChecks(t *testing.T) {
	mk := func(dtype string, shape []uint64, data []byte) Value {
		s := Array()
		s.Arr = []Value{}
		for _, d := range shape {
			s.Arr = append(s.Arr, Uint(d))
		}
		return MapOf(E("name", Str("t")), E("dtype", Str(dtype)), E("shape", s), E("data", Bin(data)))
	}
	cases := []struct {
		name   string
		v      Value
		reason string
		field  string
	}{
		{"ok scalar", mk("<f4", nil, []byte{0, 0, 0x80, 0x3f}), "", ""},
		{"big-endian dtype", mk(">f4", []uint64{1}, make([]byte, 4)), "tensor", "body.tensors[0].dtype"},
		{"short data", mk("<f4", []uint64{2}, make([]byte, 4)), "tensor", "body.tensors[0].data"},
		{"nine dims", mk("|u1", []uint64{1, 1, 1, 1, 1, 1, 1, 1, 1}, []byte{0}), "tensor", "body.tensors[0].shape"},
		{"dim 2^31", mk("|u1", []uint64{1, 1 << 31}, []byte{0}), "tensor", "body.tensors[0].shape[1]"},
		{"f4 NaN", mk("<f4", []uint64{1}, []byte{0, 0, 0xc0, 0x7f}), "non_finite", "body.tensors[0].data"},
		{"f2 inf", mk("<f2", []uint64{1}, []byte{0, 0x7c}), "non_finite", "body.tensors[0].data"},
		{"bf16 -inf", mk("bf16", []uint64{1}, []byte{0x80, 0xff}), "non_finite", "body.tensors[0].data"},
		{"zero dim", mk("<f4", []uint64{0, 5}, nil), "", ""},
	}
	for _, c := range cases {
		tn, err := CheckTensor(c.v, "body.tensors[0]")
		if err == nil && !tn.Finite() {
			err = errf("non_finite", "body.tensors[0].data", "not finite")
		}
		if c.reason == "" {
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s: accepted", c.name)
			continue
		}
		if e := err.(*Error); e.Reason != c.reason || e.Field != c.field {
			t.Errorf("%s: got %s/%s want %s/%s", c.name, e.Reason, e.Field, c.reason, c.field)
		}
	}
}
