// The collaborative editor's edit model: the same rules as the server's
// (src/bin/tidings/collaboration.rs). An op is one splice {pos, del, ins}: delete `del`
// UTF-16 code units at `pos`, then insert `ins` there.
//
// - conflicts(a, b): the two concurrent edits touch the same text (shared deleted character,
//   or one's position strictly inside the other's deleted range): they cannot both be kept.
// - transform(op, applied, opFirst): `op` rebased over the concurrent `applied`, which was
//   applied first; `opFirst` orders two insertions at the same point.
// - diff(before, after): the single splice turning `before` into `after`.
(function (root) {
  "use strict";

  function end(op) {
    return op.pos + op.del;
  }

  function conflicts(a, b) {
    const a1 = a.pos, a2 = end(a), b1 = b.pos, b2 = end(b);
    return Math.max(a1, b1) < Math.min(a2, b2) || (b1 < a1 && a1 < b2) || (a1 < b1 && b1 < a2);
  }

  function transform(op, applied, opFirst) {
    const ps = op.pos, pe = end(op), rs = applied.pos, re = end(applied);
    const left = pe <= rs && re <= ps ? opFirst : pe <= rs;
    if (left) return { pos: op.pos, del: op.del, ins: op.ins };
    return { pos: ps - applied.del + applied.ins.length, del: op.del, ins: op.ins };
  }

  function apply(text, op) {
    if (op.pos < 0 || end(op) > text.length) throw new RangeError("edit out of range");
    return text.slice(0, op.pos) + op.ins + text.slice(end(op));
  }

  const isHigh = (c) => c >= 0xd800 && c < 0xdc00;
  const isLow = (c) => c >= 0xdc00 && c < 0xe000;

  function diff(before, after) {
    if (before === after) return null;
    const max = Math.min(before.length, after.length);
    let prefix = 0;
    while (prefix < max && before.charCodeAt(prefix) === after.charCodeAt(prefix)) prefix++;
    // Never split a surrogate pair.
    if (prefix > 0 && isHigh(before.charCodeAt(prefix - 1))) prefix--;
    let suffix = 0;
    while (
      suffix < max - prefix &&
      before.charCodeAt(before.length - 1 - suffix) === after.charCodeAt(after.length - 1 - suffix)
    ) suffix++;
    if (suffix > 0 && isLow(before.charCodeAt(before.length - suffix))) suffix--;
    return {
      pos: prefix,
      del: before.length - prefix - suffix,
      ins: after.slice(prefix, after.length - suffix),
    };
  }

  // Maps a caret position through an op (the caret stays before text inserted at it).
  function mapCaret(p, op) {
    if (p <= op.pos) return p;
    if (p >= end(op)) return p - op.del + op.ins.length;
    return op.pos + op.ins.length;
  }

  const api = { conflicts, transform, apply, diff, mapCaret };
  if (typeof module === "object" && module.exports) module.exports = api;
  else root.TidingsOT = api;
})(typeof self !== "undefined" ? self : this);
