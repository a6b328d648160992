package qflare

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// JSON view of bodies, as the golden vectors write them (§13): bins as
// {"bin": hex}. Objects keep their order, which a plain Go map would lose.

// JObj is an ordered JSON object.
type JObj []JKV

// JKV is one member of a JObj.
type JKV struct {
	Key string
	Val any // nil, bool, json.Number, string, []any, JObj
}

// Get returns a member by name.
func (o JObj) Get(key string) (any, bool) {
	for _, kv := range o {
		if kv.Key == key {
			return kv.Val, true
		}
	}
	return nil, false
}

// ParseJSON reads JSON keeping object order and number literals.
func ParseJSON(data []byte) (any, error) {
	d := json.NewDecoder(bytes.NewReader(data))
	d.UseNumber()
	v, err := jsonValue(d)
	if err != nil {
		return nil, err
	}
	if d.More() {
		return nil, fmt.Errorf("trailing JSON")
	}
	return v, nil
}

func jsonValue(d *json.Decoder) (any, error) {
	tok, err := d.Token()
	if err != nil {
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			obj := JObj{}
			for d.More() {
				kt, err := d.Token()
				if err != nil {
					return nil, err
				}
				v, err := jsonValue(d)
				if err != nil {
					return nil, err
				}
				obj = append(obj, JKV{kt.(string), v})
			}
			_, err := d.Token()
			return obj, err
		case '[':
			arr := []any{}
			for d.More() {
				v, err := jsonValue(d)
				if err != nil {
					return nil, err
				}
				arr = append(arr, v)
			}
			_, err := d.Token()
			return arr, err
		}
		return nil, fmt.Errorf("unexpected delimiter %v", t)
	default:
		return t, nil
	}
}

// BodyFromView builds the body value of type typ from its JSON view, with
// the body's keys in the encoder order of §7 and free-form maps in view order.
func BodyFromView(typ string, view any) (Value, error) {
	schema, ok := bodySchemas[typ]
	if !ok {
		return Value{}, fmt.Errorf("unknown type %q", typ)
	}
	obj, ok := view.(JObj)
	if !ok {
		return Value{}, fmt.Errorf("body view is not an object")
	}
	if len(obj) != len(schema) {
		return Value{}, fmt.Errorf("body view has %d keys, schema %d", len(obj), len(schema))
	}
	out := MapOf()
	for _, d := range schema {
		j, ok := obj.Get(d.name)
		if !ok {
			return Value{}, fmt.Errorf("view lacks %q", d.name)
		}
		v, err := fromView(d.t, j)
		if err != nil {
			return Value{}, fmt.Errorf("%s: %w", d.name, err)
		}
		out.Map = append(out.Map, E(d.name, v))
	}
	return out, nil
}

func viewBin(j any) (Value, error) {
	o, ok := j.(JObj)
	if !ok || len(o) != 1 || o[0].Key != "bin" {
		return Value{}, fmt.Errorf("not a {\"bin\": hex} object")
	}
	s, ok := o[0].Val.(string)
	if !ok {
		return Value{}, fmt.Errorf("bin is not a string")
	}
	b, err := hex.DecodeString(s)
	return Bin(b), err
}

func viewInt(j any) (Value, error) {
	n, ok := j.(json.Number)
	if !ok {
		return Value{}, fmt.Errorf("not a number")
	}
	s := n.String()
	if strings.HasPrefix(s, "-") {
		i, err := strconv.ParseInt(s, 10, 64)
		return Int(i), err
	}
	u, err := strconv.ParseUint(s, 10, 64)
	return Uint(u), err
}

func viewFloat(j any) (Value, error) {
	n, ok := j.(json.Number)
	if !ok {
		return Value{}, fmt.Errorf("not a number")
	}
	x, err := strconv.ParseFloat(n.String(), 64)
	return Float(x), err
}

func viewStr(j any) (Value, error) {
	s, ok := j.(string)
	if !ok {
		return Value{}, fmt.Errorf("not a string")
	}
	return Str(s), nil
}

func viewMap(j any, each func(any) (Value, error)) (Value, error) {
	o, ok := j.(JObj)
	if !ok {
		return Value{}, fmt.Errorf("not an object")
	}
	out := MapOf()
	for _, kv := range o {
		v, err := each(kv.Val)
		if err != nil {
			return Value{}, fmt.Errorf("%s: %w", kv.Key, err)
		}
		out.Map = append(out.Map, E(kv.Key, v))
	}
	return out, nil
}

func viewScalar(j any) (Value, error) {
	switch x := j.(type) {
	case nil:
		return Nil(), nil
	case bool:
		return Bool(x), nil
	case string:
		return Str(x), nil
	case json.Number:
		// An integer literal is an int; one with a fraction or exponent a float.
		if strings.ContainsAny(x.String(), ".eE") {
			return viewFloat(x)
		}
		return viewInt(x)
	}
	return Value{}, fmt.Errorf("not a scalar")
}

func viewArray(j any, each func(any) (Value, error)) (Value, error) {
	a, ok := j.([]any)
	if !ok {
		return Value{}, fmt.Errorf("not an array")
	}
	out := Array()
	out.Arr = []Value{}
	for i, e := range a {
		v, err := each(e)
		if err != nil {
			return Value{}, fmt.Errorf("[%d]: %w", i, err)
		}
		out.Arr = append(out.Arr, v)
	}
	return out, nil
}

func fromView(t *ft, j any) (Value, error) {
	switch t.kind {
	case fID, fEnum, fStr, fInner:
		return viewStr(j)
	case fInt:
		return viewInt(j)
	case fBin:
		return viewBin(j)
	case fOpt:
		if j == nil {
			return Nil(), nil
		}
		return fromView(t.elem, j)
	case fMapStrStr:
		return viewMap(j, viewStr)
	case fFloats:
		return viewMap(j, viewFloat)
	case fScalars:
		return viewMap(j, viewScalar)
	case fSettings:
		return viewMap(j, func(e any) (Value, error) {
			if _, nested := e.(JObj); nested {
				return viewMap(e, viewScalar)
			}
			return viewScalar(e)
		})
	case fScores:
		return viewMap(j, func(e any) (Value, error) { return viewMap(e, viewFloat) })
	case fArray:
		return viewArray(j, func(e any) (Value, error) { return fromView(t.elem, e) })
	case fTensors:
		return viewArray(j, tensorFromView)
	}
	return Value{}, fmt.Errorf("unhandled field type")
}

func tensorFromView(j any) (Value, error) {
	o, ok := j.(JObj)
	if !ok {
		return Value{}, fmt.Errorf("tensor is not an object")
	}
	get := func(k string) any { v, _ := o.Get(k); return v }
	name, err := viewStr(get("name"))
	if err != nil {
		return Value{}, err
	}
	dtype, err := viewStr(get("dtype"))
	if err != nil {
		return Value{}, err
	}
	shape, err := viewArray(get("shape"), viewInt)
	if err != nil {
		return Value{}, err
	}
	data, err := viewBin(get("data"))
	if err != nil {
		return Value{}, err
	}
	return MapOf(E("name", name), E("dtype", dtype), E("shape", shape), E("data", data)), nil
}

// HeaderFromView reads the "header" object of a golden vector (hex strings
// for bins, chunk as an object or null).
func HeaderFromView(view any) (Header, error) {
	var h Header
	o, ok := view.(JObj)
	if !ok {
		return h, fmt.Errorf("header is not an object")
	}
	get := func(k string) any { v, _ := o.Get(k); return v }
	num := func(k string) (uint64, error) {
		n, ok := get(k).(json.Number)
		if !ok {
			return 0, fmt.Errorf("%s is not a number", k)
		}
		return strconv.ParseUint(n.String(), 10, 64)
	}
	hexInto := func(dst []byte, k string, j any) error {
		s, ok := j.(string)
		if !ok {
			return fmt.Errorf("%s is not a hex string", k)
		}
		b, err := hex.DecodeString(s)
		if err != nil || len(b) != len(dst) {
			return fmt.Errorf("%s: want %d hex bytes", k, len(dst))
		}
		copy(dst, b)
		return nil
	}
	var err error
	if h.V, err = num("v"); err != nil {
		return h, err
	}
	h.Type, _ = get("type").(string)
	h.Sender, _ = get("sender").(string)
	h.SigAlg, _ = get("sig_alg").(string)
	if err = hexInto(h.ID[:], "id", get("id")); err != nil {
		return h, err
	}
	if err = hexInto(h.KeyID[:], "key_id", get("key_id")); err != nil {
		return h, err
	}
	if err = hexInto(h.BodyDigest[:], "body_digest", get("body_digest")); err != nil {
		return h, err
	}
	if h.TsMs, err = num("ts_ms"); err != nil {
		return h, err
	}
	if get("round") != nil {
		r, err := num("round")
		if err != nil {
			return h, err
		}
		h.Round = &r
	}
	if c := get("chunk"); c != nil {
		co, ok := c.(JObj)
		if !ok {
			return h, fmt.Errorf("chunk is not an object")
		}
		h.Chunk = &Chunk{}
		s, _ := co.Get("stream")
		if err = hexInto(h.Chunk.Stream[:], "chunk.stream", s); err != nil {
			return h, err
		}
		for _, kv := range co {
			switch kv.Key {
			case "index", "count":
				n, ok := kv.Val.(json.Number)
				if !ok {
					return h, fmt.Errorf("chunk.%s is not a number", kv.Key)
				}
				u, err := strconv.ParseUint(n.String(), 10, 64)
				if err != nil {
					return h, err
				}
				if kv.Key == "index" {
					h.Chunk.Index = u
				} else {
					h.Chunk.Count = u
				}
			}
		}
	}
	return h, nil
}
