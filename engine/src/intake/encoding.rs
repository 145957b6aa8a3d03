//! Character encodings of text input: detection (BOM first, then content)
//! and a streaming transcoder to UTF-8.
//!
//! UTF-8 input is never transcoded: it is read as bytes so that invalid
//! sequences can be reported per row with their line number instead of being
//! silently replaced. Every other encoding is decoded to UTF-8 on the fly.

use std::io::Read;

use encoding_rs::{Encoding, UTF_8, UTF_16BE, UTF_16LE};

/// Looks up an encoding by label (`utf-8`, `latin-1`, `windows-1252`,
/// `utf-16`, … any WHATWG label).
pub fn lookup(label: &str) -> Option<&'static Encoding> {
    let label = label.trim().to_ascii_lowercase();
    match label.as_str() {
        "utf-16" | "utf16" => Some(UTF_16LE),
        "latin-1" | "latin1" => Some(encoding_rs::WINDOWS_1252),
        _ => Encoding::for_label(label.as_bytes()),
    }
}

/// The encoding of a text input and the length of its byte-order mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detected {
    /// The encoding.
    pub encoding: &'static Encoding,
    /// Bytes of BOM at the start of the file, to skip.
    pub bom_len: usize,
}

/// Detects the encoding of `sample` (the first bytes of a file). A BOM wins;
/// then a declared encoding; then UTF-16 without BOM by its zero bytes;
/// then UTF-8 when the sample is (nearly) valid UTF-8; then a statistical
/// detector.
pub fn detect(sample: &[u8], declared: Option<&'static Encoding>) -> Detected {
    if let Some((encoding, bom_len)) = Encoding::for_bom(sample) {
        return Detected { encoding, bom_len };
    }
    if let Some(encoding) = declared {
        return Detected { encoding, bom_len: 0 };
    }
    if let Some(encoding) = utf16_without_bom(sample) {
        return Detected { encoding, bom_len: 0 };
    }
    if looks_like_utf8(sample) {
        return Detected {
            encoding: UTF_8,
            bom_len: 0,
        };
    }
    let mut detector = chardetng::EncodingDetector::new(chardetng::Iso2022JpDetection::Deny);
    detector.feed(sample, true);
    Detected {
        encoding: detector.guess(None, chardetng::Utf8Detection::Allow),
        bom_len: 0,
    }
}

/// UTF-16 text without a BOM has a zero byte in every other position for
/// ASCII characters.
fn utf16_without_bom(sample: &[u8]) -> Option<&'static Encoding> {
    let n = sample.len().min(4096) & !1;
    if n < 4 {
        return None;
    }
    let (mut even_zero, mut odd_zero) = (0, 0);
    for pair in sample[..n].chunks_exact(2) {
        even_zero += usize::from(pair[0] == 0);
        odd_zero += usize::from(pair[1] == 0);
    }
    let pairs = n / 2;
    if odd_zero * 10 >= pairs * 7 && even_zero * 10 <= pairs {
        Some(UTF_16LE)
    } else if even_zero * 10 >= pairs * 7 && odd_zero * 10 <= pairs {
        Some(UTF_16BE)
    } else {
        None
    }
}

/// True when the sample is UTF-8 but for a few bad bytes: a UTF-8 file with a
/// stray invalid byte is still a UTF-8 file whose bad rows are reported,
/// while a Latin-1 file has no valid multi-byte sequences at all.
fn looks_like_utf8(sample: &[u8]) -> bool {
    let mut valid_multibyte = 0usize;
    let mut invalid = 0usize;
    let mut rest = sample;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                valid_multibyte += s.bytes().filter(|b| *b >= 0xC0).count();
                break;
            }
            Err(e) => {
                let (good, bad) = rest.split_at(e.valid_up_to());
                valid_multibyte += good.iter().filter(|b| **b >= 0xC0).count();
                match e.error_len() {
                    Some(len) => {
                        invalid += 1;
                        rest = &bad[len..];
                    }
                    // A sequence cut by the end of the sample.
                    None => break,
                }
            }
        }
    }
    invalid == 0 || (valid_multibyte > 0 && invalid <= valid_multibyte * 4)
}

/// Whether the sample is binary (not text in any encoding we read): it has
/// NUL bytes and is not UTF-16.
pub fn is_binary(sample: &[u8]) -> bool {
    if Encoding::for_bom(sample).is_some() || utf16_without_bom(sample).is_some() {
        return false;
    }
    let n = sample.len().min(8192);
    let head = &sample[..n];
    let nul = head.iter().filter(|b| **b == 0).count();
    let control = head
        .iter()
        .filter(|b| matches!(**b, 0..=8 | 14..=31) && **b != 0x1b)
        .count();
    nul > 0 || control * 20 > n.max(1)
}

/// A reader that yields UTF-8 bytes: the BOM skipped, and the input
/// transcoded unless it is UTF-8 already.
pub fn utf8_reader<R: Read + Send + 'static>(
    mut inner: R,
    detected: Detected,
) -> std::io::Result<Box<dyn Read + Send>> {
    if detected.bom_len > 0 {
        let mut bom = vec![0u8; detected.bom_len];
        inner.read_exact(&mut bom)?;
    }
    if detected.encoding == UTF_8 {
        Ok(Box::new(inner))
    } else {
        Ok(Box::new(
            encoding_rs_io::DecodeReaderBytesBuilder::new()
                .encoding(Some(detected.encoding))
                .bom_sniffing(false)
                .build(inner),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: Vec<u8>) -> String {
        let d = detect(&bytes, None);
        let mut out = String::new();
        utf8_reader(std::io::Cursor::new(bytes), d)
            .and_then(|mut r| r.read_to_string(&mut out))
            .map(|_| out)
            .unwrap_or_else(|e| panic!("decode failed: {e}"))
    }

    #[test]
    fn boms_win_and_are_skipped() {
        assert_eq!(decode_all(b"\xef\xbb\xbfid,name\n".to_vec()), "id,name\n");
        let mut le = vec![0xff, 0xfe];
        le.extend("id,né\n".encode_utf16().flat_map(|u| u.to_le_bytes()));
        assert_eq!(decode_all(le), "id,né\n");
        let mut be = vec![0xfe, 0xff];
        be.extend("id,né\n".encode_utf16().flat_map(|u| u.to_be_bytes()));
        assert_eq!(decode_all(be), "id,né\n");
    }

    #[test]
    fn utf16_without_bom_is_detected() {
        let le: Vec<u8> = "name,city\nJosé,Zürich\n"
            .encode_utf16()
            .flat_map(|u| u.to_le_bytes())
            .collect();
        assert_eq!(detect(&le, None).encoding, UTF_16LE);
        assert_eq!(decode_all(le), "name,city\nJosé,Zürich\n");
    }

    #[test]
    fn windows_1252_is_detected_and_transcoded() {
        let text = "name;city\nJosé Müller;Zürich\nFrançois;Besançon\nBjörk;Reykjavík\n";
        let (bytes, _, _) = encoding_rs::WINDOWS_1252.encode(text);
        let bytes = bytes.into_owned();
        assert_ne!(detect(&bytes, None).encoding, UTF_8);
        assert_eq!(decode_all(bytes), text);
    }

    #[test]
    fn utf8_with_a_stray_bad_byte_stays_utf8() {
        let mut bytes = "name\nJosé\nZoë\nRenée\nJürgen\n".as_bytes().to_vec();
        bytes.extend_from_slice(b"bad\xff\n");
        assert_eq!(detect(&bytes, None).encoding, UTF_8);
    }

    #[test]
    fn binary_is_recognised() {
        assert!(is_binary(&[0x7f, b'E', b'L', b'F', 0, 0, 1, 2, 3]));
        assert!(!is_binary(b"a,b\n1,2\n"));
        let le: Vec<u8> = "a,b\n".encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
        assert!(!is_binary(&le));
    }

    #[test]
    fn labels() {
        assert_eq!(lookup("latin-1"), Some(encoding_rs::WINDOWS_1252));
        assert_eq!(lookup("UTF-8"), Some(UTF_8));
        assert_eq!(lookup("utf-16"), Some(UTF_16LE));
        assert_eq!(lookup("klingon"), None);
    }
}
