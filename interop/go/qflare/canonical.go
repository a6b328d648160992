package qflare

import (
	"fmt"
	"sort"
)

// Canonical returns a body in the form encoders write (§1, §7): the body's
// keys in listed order, the entries of free-form maps (labels, metrics,
// config, metadata, detail, and the inner maps of settings) sorted by the
// UTF-8 bytes of their keys, numbers in float maps as float64, tensor keys
// as name, dtype, shape, data. Marshal
// of the result gives the body bytes to hash and sign. v must be a map
// holding every key of the type; values are not validated here.
func Canonical(typ string, v Value) (Value, error) {
	schema, ok := bodySchemas[typ]
	if !ok {
		return Value{}, fmt.Errorf("unknown body type %q", typ)
	}
	if v.Kind != KMap {
		return Value{}, fmt.Errorf("body is %s, not map", v.Kind)
	}
	out := MapOf()
	for _, d := range schema {
		x, ok := v.Get(d.name)
		if !ok {
			return Value{}, fmt.Errorf("body lacks %q", d.name)
		}
		out.Map = append(out.Map, E(d.name, canonical(d.t, x)))
	}
	return out, nil
}

// EncodeBody is Marshal(Canonical(typ, v)).
func EncodeBody(typ string, v Value) ([]byte, error) {
	c, err := Canonical(typ, v)
	if err != nil {
		return nil, err
	}
	return Marshal(c), nil
}

func canonical(t *ft, x Value) Value {
	switch t.kind {
	case fOpt:
		if x.Kind == KNil {
			return x
		}
		return canonical(t.elem, x)
	case fMapStrStr, fScalars, fFloats, fSettings:
		if x.Kind != KMap {
			return x
		}
		entries := append([]Entry(nil), x.Map...)
		// Go compares strings byte by byte: UTF-8 byte order.
		sort.SliceStable(entries, func(i, j int) bool { return entries[i].Key < entries[j].Key })
		for i, e := range entries {
			switch {
			case t.kind == fFloats:
				entries[i].Val = asFloat64(e.Val)
			case t.kind == fSettings && e.Val.Kind == KMap:
				entries[i].Val = canonical(tScalars, e.Val) // the inner map is sorted too
			case e.Val.Kind == KFloat:
				entries[i].Val = Float(e.Val.F)
			}
		}
		return Value{Kind: KMap, Map: entries}
	case fTensors:
		if x.Kind != KArray {
			return x
		}
		arr := make([]Value, len(x.Arr))
		for i, tv := range x.Arr {
			arr[i] = tv
			if tv.Kind != KMap {
				continue
			}
			m := MapOf()
			for _, k := range []string{"name", "dtype", "shape", "data"} {
				if y, ok := tv.Get(k); ok {
					m.Map = append(m.Map, E(k, y))
				}
			}
			arr[i] = m
		}
		return Value{Kind: KArray, Arr: arr}
	}
	return x
}

func asFloat64(x Value) Value {
	switch {
	case x.Kind == KFloat:
		return Float(x.F)
	case x.Kind == KInt && x.Neg:
		return Float(float64(x.I))
	case x.Kind == KInt:
		return Float(float64(x.U))
	}
	return x
}
