//! HPACK Huffman lengths and encoding (RFC 7541 section 5.2 and Appendix B).
//!
//! A placeholder must cost exactly as many Huffman bits as its real value, so
//! an HTTP/2 header carrying it can be rewritten in place, bit for bit.

use super::hpack_table::CODES;

pub fn symbol_bits(byte: u8) -> u64 {
    u64::from(CODES[usize::from(byte)].1)
}

pub fn huffman_bits(bytes: &[u8]) -> u64 {
    bytes.iter().map(|&b| symbol_bits(b)).sum()
}

/// Huffman-encodes `bytes`, padding the last octet with the EOS prefix (1 bits).
pub fn huffman_encode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut acc: u64 = 0;
    let mut pending: u32 = 0;
    for &byte in bytes {
        let (code, len) = CODES[usize::from(byte)];
        acc = (acc << len) | u64::from(code);
        pending += u32::from(len);
        while pending >= 8 {
            pending -= 8;
            out.push((acc >> pending) as u8);
        }
        acc &= (1u64 << pending) - 1;
    }
    if pending > 0 {
        let pad = 8 - pending;
        out.push(((acc << pad) | ((1u64 << pad) - 1)) as u8);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn rfc_7541_appendix_c4_examples() {
        assert_eq!(
            hex(&huffman_encode(b"www.example.com")),
            "f1e3c2e5f23a6ba0ab90f4ff"
        );
        assert_eq!(hex(&huffman_encode(b"no-cache")), "a8eb10649cbf");
        assert_eq!(hex(&huffman_encode(b"custom-key")), "25a849e95ba97d7f");
        assert_eq!(hex(&huffman_encode(b"custom-value")), "25a849e95bb8e8b4bf");
    }

    #[test]
    fn bit_lengths_match_the_encoding() {
        for text in [&b"www.example.com"[..], b"no-cache", b"Bearer sk-live-xyz"] {
            let bits = huffman_bits(text);
            assert_eq!(huffman_encode(text).len() as u64, bits.div_ceil(8));
        }
    }
}
