//! HTTP/2 with prior knowledge, refused cleanly: the client's connection
//! preface is answered with an empty SETTINGS frame and a GOAWAY carrying
//! `HTTP_1_1_REQUIRED` (RFC 9113, sections 3.4 and 9.2.1), which HTTP/2
//! clients report as "use HTTP/1.1". Pure functions.

/// The client preface of HTTP/2 (RFC 9113, section 3.4).
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// `HTTP_1_1_REQUIRED`.
pub(crate) const HTTP_1_1_REQUIRED: u32 = 0xd;

/// Whether `buf` starts (or, so far, may start) the HTTP/2 preface.
pub(crate) fn may_be_preface(buf: &[u8]) -> bool {
    let n = buf.len().min(PREFACE.len());
    buf[..n] == PREFACE[..n]
}

/// SETTINGS (empty) then GOAWAY(last stream 0, HTTP_1_1_REQUIRED, `debug`).
pub(crate) fn refusal(debug: &str) -> Vec<u8> {
    let mut out = Vec::new();
    frame(&mut out, 0x4, &[]);
    let mut goaway = Vec::new();
    goaway.extend_from_slice(&0u32.to_be_bytes());
    goaway.extend_from_slice(&HTTP_1_1_REQUIRED.to_be_bytes());
    goaway.extend_from_slice(debug.as_bytes());
    frame(&mut out, 0x7, &goaway);
    out
}

fn frame(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(0); // flags
    out.extend_from_slice(&0u32.to_be_bytes()); // stream 0
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_two_well_formed_frames() {
        let r = refusal("x");
        assert_eq!(&r[..9], &[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert_eq!(&r[9..18], &[0, 0, 9, 7, 0, 0, 0, 0, 0]);
        assert_eq!(&r[18..22], &[0, 0, 0, 0]);
        assert_eq!(&r[22..26], &[0, 0, 0, 0xd]);
        assert_eq!(&r[26..], b"x");
        assert!(may_be_preface(b"PRI * HT"));
        assert!(!may_be_preface(b"GET / HTTP/1.1"));
    }
}
