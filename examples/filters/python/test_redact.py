"""Unit tests for redact.py, in plain CPython: `python3 -m unittest -v` in this directory."""

import json
import unittest

import redact


def config(**raw):
    return redact.parse_config(json.dumps(raw))


def run(cfg, doc):
    """Redacts `doc` (a Python value) with `cfg`; returns (new doc or None, count)."""
    body, count = redact.redact_body(cfg, json.dumps(doc).encode())
    return (json.loads(body) if body is not None else None), count


class Paths(unittest.TestCase):
    def test_nested_fields_are_masked_and_the_rest_kept(self):
        cfg = config(fields=["card.number", "email"])
        doc = {"id": 7, "email": "a@b.c", "card": {"number": "4111", "exp": "12/30"}}
        self.assertEqual(
            run(cfg, doc),
            ({"id": 7, "email": "****", "card": {"number": "****", "exp": "12/30"}}, 2),
        )

    def test_arrays_on_the_way_are_entered_element_by_element(self):
        cfg = config(fields=["orders.card.number"], mask="X")
        doc = [
            {"orders": [{"card": {"number": "1"}}, {"card": {"number": "2"}}, {"note": "n"}]},
            {"orders": {"card": [{"number": "3"}, {"number": None}]}},
        ]
        got, count = run(cfg, doc)
        self.assertEqual(
            got,
            [
                {"orders": [{"card": {"number": "X"}}, {"card": {"number": "X"}}, {"note": "n"}]},
                {"orders": {"card": [{"number": "X"}, {"number": None}]}},
            ],
        )
        self.assertEqual(count, 3)

    def test_a_selected_value_is_masked_whole_arrays_keep_their_shape(self):
        cfg = config(fields=["card", "phones", "n"])
        doc = {"card": {"number": "1", "cvv": "2"}, "phones": ["1", ["2", 3]], "n": None}
        self.assertEqual(
            run(cfg, doc), ({"card": "****", "phones": ["****", ["****", "****"]], "n": None}, 4)
        )

    def test_star_matches_any_one_key(self):
        cfg = config(fields=["users.*.ssn"])
        doc = {"users": {"u1": {"ssn": "1", "name": "a"}, "u2": {"ssn": "2"}}, "ssn": "top"}
        self.assertEqual(
            run(cfg, doc),
            ({"users": {"u1": {"ssn": "****", "name": "a"}, "u2": {"ssn": "****"}}, "ssn": "top"}, 2),
        )

    def test_globstar_matches_any_depth_including_none(self):
        cfg = config(fields=["**.password"])
        doc = {"password": "0", "a": {"password": "1", "b": [{"c": {"password": "2"}}]}, "p": 1}
        self.assertEqual(
            run(cfg, doc),
            ({"password": "****", "a": {"password": "****", "b": [{"c": {"password": "****"}}]}, "p": 1}, 3),
        )

    def test_globstar_below_a_key(self):
        cfg = config(fields=["data.**.token"])
        doc = {"token": "keep", "data": {"token": "1", "x": {"token": "2"}}}
        self.assertEqual(run(cfg, doc), ({"token": "keep", "data": {"token": "****", "x": {"token": "****"}}}, 2))

    def test_overlapping_paths_mask_each_value_once(self):
        cfg = config(fields=["card", "card.number", "*.number"])
        got, count = run(cfg, {"card": {"number": "1"}, "bank": {"number": "2"}})
        self.assertEqual(got, {"card": "****", "bank": {"number": "****"}})
        self.assertEqual(count, 2)

    def test_nothing_to_mask_leaves_the_body_alone(self):
        cfg = config(fields=["email"])
        self.assertEqual(redact.redact_body(cfg, b'{"name": "x",  "n": 1.50}'), (None, 0))
        self.assertEqual(redact.redact_body(cfg, b'"just a string"'), (None, 0))

    def test_output_is_compact_utf8_in_the_original_key_order(self):
        cfg = config(fields=["email"])
        body, _ = redact.redact_body(cfg, '{"z": "é", "email": "x", "a": 1.5}'.encode())
        self.assertEqual(body, '{"z":"é","email":"****","a":1.5}'.encode())


class InvalidBodies(unittest.TestCase):
    def test_not_json(self):
        cfg = config(fields=["email"])
        for body in (b'{"email": ', b"<html>", b"\xff\xfe\x00", b'{"a": NaN}', b"[Infinity]"):
            with self.assertRaises(redact.BodyError, msg=body):
                redact.redact_body(cfg, body)

    def test_too_deep(self):
        cfg = config(fields=["**.x"])
        with self.assertRaises(redact.BodyError):
            redact.redact_body(cfg, b"[" * 100_000 + b"]" * 100_000)

    def test_a_number_that_does_not_re_encode(self):
        cfg = config(fields=["email"])
        with self.assertRaises(redact.BodyError):
            redact.redact_body(cfg, b'{"email": "x", "big": 1e400}')


class ContentTypes(unittest.TestCase):
    def test_defaults_take_json_and_plus_json(self):
        cfg = config(fields=["a"])
        for ct in ("application/json", "Application/JSON; charset=utf-8", "application/problem+json"):
            self.assertTrue(redact.is_json_type(cfg, ct), ct)
        for ct in (None, "text/plain", "application/jsonx", "text/html; x=+json", "+json"):
            self.assertFalse(redact.is_json_type(cfg, ct), ct)

    def test_configured_list_replaces_the_defaults(self):
        cfg = config(fields=["a"], content_types=["text/plain"])
        self.assertTrue(redact.is_json_type(cfg, "text/plain; charset=utf-8"))
        self.assertFalse(redact.is_json_type(cfg, "application/json"))


class Configs(unittest.TestCase):
    def bad(self, text, needle):
        with self.assertRaises(redact.ConfigError) as e:
            redact.parse_config(text)
        self.assertIn(needle, str(e.exception))

    def test_defaults(self):
        cfg = config(fields=["a"])
        self.assertEqual(cfg.mask, "****")
        self.assertEqual(cfg.content_types, ["application/json", "+json"])
        self.assertEqual(cfg.on_invalid, "pass")

    def test_rejected(self):
        self.bad("{}", '"fields" is required')
        self.bad("", '"fields" is required')
        self.bad("[1]", "config must be an object")
        self.bad("{", "config is not JSON")
        self.bad('{"fields": "email"}', "\"fields\" must be a non-empty list of dotted paths, not the string 'email'")
        self.bad('{"fields": []}', '"fields" must be a non-empty list')
        self.bad('{"fields": ["a", 3]}', '"fields"[1] must be a non-empty string, not a number')
        self.bad('{"fields": [""]}', '"fields"[0] must be a non-empty string')
        self.bad('{"fields": ["card..number"]}', "empty segment")
        self.bad('{"fields": [".a"]}', "empty segment")
        self.bad('{"fields": ["a.**"]}', 'ends in "**"')
        self.bad('{"fields": ["a"], "mask": 0}', '"mask" must be a string')
        self.bad('{"fields": ["a"], "content_types": "application/json"}', '"content_types" must be')
        self.bad('{"fields": ["a"], "content_types": ["json"]}', '"content_types"[0]')
        self.bad('{"fields": ["a"], "on_invalid": "drop"}', '"on_invalid" must be "pass" or "block"')
        self.bad('{"fields": ["a"], "feilds": ["b"]}', "unknown config key 'feilds'")


if __name__ == "__main__":
    unittest.main()
