//! Placeholders: what workloads hold instead of secrets (pure).
//!
//! `kloak:` + up to 10 random Crockford base32 characters (a ULID's random
//! part, never its timestamp) + a random tail, exactly as long as the real
//! value and with exactly as many HPACK Huffman bits.

pub mod hpack;
mod hpack_table;

use std::fmt;

use rand::seq::SliceRandom;
use rand::RngCore;
use thiserror::Error;

pub const PREFIX: &str = "kloak:";
pub const MIN_VALUE_LEN: usize = 12;
pub const MAX_VALUE_LEN: usize = 4096;
pub const KEY_LEN: usize = 16;
const CROCKFORD: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const TAIL: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const CROCKFORD_CHARS: usize = 10;
/// Fewer possible placeholders than this and one could be guessed. Short
/// values made of costly (8-bit Huffman) characters leave little freedom:
/// a 12-byte upper-case token still gets about 2^15 placeholders.
const MIN_ENTROPY_BITS: f64 = 12.0;

#[derive(Debug, Error, PartialEq)]
pub enum PlaceholderError {
    #[error("value is {len} bytes; secrets must be at least {MIN_VALUE_LEN} bytes")]
    TooShort { len: usize },
    #[error("value is {len} bytes; secrets must be at most {MAX_VALUE_LEN} bytes")]
    TooLong { len: usize },
    #[error("no placeholder can match the value's HTTP/2 (HPACK Huffman) length of {bits} bits")]
    NoHuffmanMatch { bits: u64 },
    #[error("the value's HTTP/2 (HPACK Huffman) length leaves only about 2^{bits:.0} placeholders: too guessable")]
    TooGuessable { bits: f64 },
    #[error("not a placeholder: {0}")]
    Malformed(&'static str),
}

/// A placeholder; not secret, so it may be shown.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Placeholder(String);

impl Placeholder {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Display for Placeholder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A real secret value: never printed, wiped from memory when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(zeroize::Zeroizing<Vec<u8>>);

impl SecretValue {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(zeroize::Zeroizing::new(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn check_length(&self) -> Result<(), PlaceholderError> {
        match self.len() {
            len if len < MIN_VALUE_LEN => Err(PlaceholderError::TooShort { len }),
            len if len > MAX_VALUE_LEN => Err(PlaceholderError::TooLong { len }),
            _ => Ok(()),
        }
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted {} bytes>", self.len())
    }
}

fn alphabet(position: usize) -> &'static [u8] {
    if position < CROCKFORD_CHARS {
        CROCKFORD
    } else {
        TAIL
    }
}

fn bit_range(set: &[u8]) -> (u64, u64) {
    let bits = set.iter().map(|&c| hpack::symbol_bits(c));
    (bits.clone().min().unwrap_or(0), bits.max().unwrap_or(0))
}

/// Generates a fresh placeholder for `real`.
pub fn generate(
    real: &SecretValue,
    rng: &mut impl RngCore,
) -> Result<Placeholder, PlaceholderError> {
    real.check_length()?;
    let body_len = real.len() - PREFIX.len();
    let want = hpack::huffman_bits(real.as_bytes());
    let prefix_bits = hpack::huffman_bits(PREFIX.as_bytes());
    let target = want
        .checked_sub(prefix_bits)
        .ok_or(PlaceholderError::NoHuffmanMatch { bits: want })?;
    // Least and most bits the positions from i to the end can cost.
    let mut min_after = vec![0u64; body_len + 1];
    let mut max_after = vec![0u64; body_len + 1];
    for i in (0..body_len).rev() {
        let (lo, hi) = bit_range(alphabet(i));
        min_after[i] = min_after[i + 1] + lo;
        max_after[i] = max_after[i + 1] + hi;
    }
    if target < min_after[0] || target > max_after[0] {
        return Err(PlaceholderError::NoHuffmanMatch { bits: want });
    }
    let mut body = Vec::with_capacity(body_len);
    let mut left = target;
    let mut entropy = 0f64;
    for i in 0..body_len {
        let feasible: Vec<u8> = alphabet(i)
            .iter()
            .copied()
            .filter(|&c| {
                let bits = hpack::symbol_bits(c);
                bits <= left && (min_after[i + 1]..=max_after[i + 1]).contains(&(left - bits))
            })
            .collect();
        let &choice = feasible
            .choose(rng)
            .ok_or(PlaceholderError::NoHuffmanMatch { bits: want })?;
        entropy += (feasible.len() as f64).log2();
        left -= hpack::symbol_bits(choice);
        body.push(choice);
    }
    if entropy < MIN_ENTROPY_BITS {
        return Err(PlaceholderError::TooGuessable { bits: entropy });
    }
    let mut text = String::with_capacity(real.len());
    text.push_str(PREFIX);
    text.extend(body.into_iter().map(char::from));
    Ok(Placeholder(text))
}

/// True when `placeholder` can stand for `real`: same length, same Huffman bits.
pub fn is_compatible(placeholder: &Placeholder, real: &SecretValue) -> bool {
    placeholder.as_bytes().len() == real.len()
        && hpack::huffman_bits(placeholder.as_bytes()) == hpack::huffman_bits(real.as_bytes())
        && validate(placeholder.as_str()).is_ok()
}

/// Accepts a stored placeholder (for example from a shadow Secret).
pub fn validate(text: &str) -> Result<Placeholder, PlaceholderError> {
    let body = text
        .strip_prefix(PREFIX)
        .ok_or(PlaceholderError::Malformed("does not start with kloak:"))?;
    if text.len() < MIN_VALUE_LEN {
        return Err(PlaceholderError::TooShort { len: text.len() });
    }
    if text.len() > MAX_VALUE_LEN {
        return Err(PlaceholderError::TooLong { len: text.len() });
    }
    if !body.bytes().all(|c| c.is_ascii_alphanumeric()) {
        return Err(PlaceholderError::Malformed(
            "characters outside [0-9A-Za-z]",
        ));
    }
    Ok(Placeholder(text.to_owned()))
}

/// The kernel's lookup key: the first 16 bytes, zero padded.
pub fn lookup_key(placeholder: &[u8]) -> [u8; KEY_LEN] {
    let mut key = [0u8; KEY_LEN];
    let n = placeholder.len().min(KEY_LEN);
    key[..n].copy_from_slice(&placeholder[..n]);
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn value(text: &str) -> SecretValue {
        SecretValue::new(text.as_bytes().to_vec())
    }

    fn random_value(rng: &mut StdRng, len: usize, charset: &[u8]) -> SecretValue {
        SecretValue::new(
            (0..len)
                .map(|_| charset[rng.gen_range(0..charset.len())])
                .collect(),
        )
    }

    #[test]
    fn same_length_and_huffman_bits_for_many_values() {
        let mut rng = StdRng::seed_from_u64(7);
        let charsets: [&[u8]; 3] = [
            b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_",
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=",
            b"0123456789abcdef",
        ];
        let (mut made, mut refused) = (0, 0);
        for len in [12, 13, 14, 16, 20, 31, 51, 64, 100, 512, 4096] {
            for charset in charsets {
                for _ in 0..20 {
                    let real = random_value(&mut rng, len, charset);
                    match generate(&real, &mut rng) {
                        Ok(p) => {
                            made += 1;
                            assert_eq!(p.as_bytes().len(), len);
                            assert_eq!(
                                hpack::huffman_bits(p.as_bytes()),
                                hpack::huffman_bits(real.as_bytes())
                            );
                            assert!(is_compatible(&p, &real));
                            assert!(validate(p.as_str()).is_ok());
                        }
                        Err(PlaceholderError::NoHuffmanMatch { bits }) => {
                            // Only when the body cannot reach the bits at all
                            // (every body character costs 5 to 8 bits).
                            refused += 1;
                            let body = (len - PREFIX.len()) as u64;
                            let target =
                                bits as i64 - hpack::huffman_bits(PREFIX.as_bytes()) as i64;
                            assert!(
                                target < 5 * body as i64 || target > 8 * body as i64,
                                "len {len}"
                            );
                        }
                        // Short values whose bits force a few costly characters.
                        Err(PlaceholderError::TooGuessable { .. }) if len <= 16 => refused += 1,
                        Err(err) => panic!("len {len}: {err}"),
                    }
                }
            }
        }
        assert!(
            refused * 20 < made,
            "{refused} refused of {}",
            made + refused
        );
    }

    #[test]
    fn starts_with_crockford_characters() {
        let mut rng = StdRng::seed_from_u64(1);
        let p = generate(&value("sk-live-0123456789abcdefghij"), &mut rng).expect("placeholder");
        let ulid = &p.as_bytes()[PREFIX.len()..PREFIX.len() + CROCKFORD_CHARS];
        assert!(ulid.iter().all(|c| CROCKFORD.contains(c)), "{p}");
    }

    #[test]
    fn lookup_keys_do_not_collide() {
        let mut rng = StdRng::seed_from_u64(3);
        let real = value("sk-live-xyz123abc456");
        let mut keys = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let p = generate(&real, &mut rng).expect("placeholder");
            assert!(keys.insert(lookup_key(p.as_bytes())), "collision");
        }
    }

    #[test]
    fn refuses_bad_lengths_and_unmatchable_values() {
        let mut rng = StdRng::seed_from_u64(5);
        assert_eq!(
            generate(&value("short"), &mut rng),
            Err(PlaceholderError::TooShort { len: 5 })
        );
        let long = SecretValue::new(vec![b'a'; 4097]);
        assert_eq!(
            generate(&long, &mut rng),
            Err(PlaceholderError::TooLong { len: 4097 })
        );
        let wide = SecretValue::new(vec![0x01; 20]);
        assert!(matches!(
            generate(&wide, &mut rng),
            Err(PlaceholderError::NoHuffmanMatch { .. })
        ));
        // 30 body bits over 6 characters: only "0", "1" and "2" fit.
        let cheap = value("kloak:000000");
        let err = generate(&cheap, &mut rng).unwrap_err();
        assert!(err.to_string().contains("guessable"), "{err}");
    }

    #[test]
    fn secret_values_never_print() {
        let real = value("sk-live-do-not-print");
        assert_eq!(format!("{real:?}"), "<redacted 20 bytes>");
    }

    #[test]
    fn keys_pad_short_placeholders() {
        assert_eq!(&lookup_key(b"kloak:ABCDEF")[..], b"kloak:ABCDEF\0\0\0\0");
        assert_eq!(
            &lookup_key(b"kloak:ABCDEFGHJKMNPQ")[..],
            b"kloak:ABCDEFGHJK"
        );
    }
}
