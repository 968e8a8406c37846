//! The ciphertext strategy's arithmetic, modelled in Rust (pure).
//!
//! The kernel patches an AES-GCM record on the wire: ciphertext bytes change
//! by XOR with D = placeholder ^ value, and the tag by the matching change of
//! GHASH (NIST SP 800-38D 6.4, 7.1). GHASH is linear in the ciphertext, so
//! if block k (1-based) of a record of n ciphertext blocks changes by D_k,
//! the tag changes by the sum of D_k * H^(n-k+2): the AAD and the lengths
//! block are untouched, and the tag mask E_K(J0) cancels out.
//!
//! `bpf/gcm.bpf.h` computes the same thing with Horner's rule and
//! precomputed powers; this module does it the plain way so that the
//! load-time self-test ([`check_kernel`]) compares two independent
//! implementations rather than one with itself.

mod selftest;

use std::ops::{BitXor, BitXorAssign, Mul};

use aes::cipher::{BlockEncrypt, KeyInit};
use aes::{Aes128, Aes256, Block};
use thiserror::Error;

pub use selftest::{check_kernel, GcmSelftestError, SelftestOp};

/// Bytes per AES and GHASH block.
pub const BLOCK_LEN: usize = 16;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum GcmError {
    /// AES-192 has no TLS 1.2/1.3 GCM suite, so only 16 and 32 are modelled.
    #[error("AES key of {0} bytes: expected 16 or 32")]
    KeyLength(usize),
}

/// An element of GF(2^128) in GCM's bit order.
///
/// The spec numbers bits from the left of the block: bit 0 is the top bit
/// of byte 0 and is the coefficient of x^0. Loading the block big-endian
/// puts that bit at the top of the `u128`, so "multiply by x" is a right
/// shift and the reduction constant R is `0xe1 << 120`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Gf128(pub u128);

impl Gf128 {
    pub const ZERO: Self = Self(0);
    /// The polynomial 1: the spec's bit 0 set, block `80 00 .. 00`.
    pub const ONE: Self = Self(1 << 127);
    /// x^128 reduced: x^7 + x^2 + x + 1, the spec's R = `e1 || 0^120`.
    pub const R: Self = Self(0xe1 << 120);

    pub fn from_bytes(bytes: [u8; BLOCK_LEN]) -> Self {
        Self(u128::from_be_bytes(bytes))
    }

    pub fn to_bytes(self) -> [u8; BLOCK_LEN] {
        self.0.to_be_bytes()
    }

    /// `self^e` by square-and-multiply: a different route to H's powers
    /// than the kernel's, on purpose.
    pub fn pow(self, mut e: u64) -> Self {
        let mut base = self;
        let mut acc = Self::ONE;
        while e > 0 {
            if e & 1 == 1 {
                acc = acc * base;
            }
            base = base * base;
            e >>= 1;
        }
        acc
    }
}

/// `x * y`: SP 800-38D 6.3, algorithm 1, bit for bit.
impl Mul for Gf128 {
    type Output = Self;

    fn mul(self, y: Self) -> Self {
        let mut z = 0u128;
        let mut v = y.0;
        for i in 0..128 {
            if (self.0 >> (127 - i)) & 1 == 1 {
                z ^= v;
            }
            let lsb = v & 1;
            v >>= 1;
            if lsb == 1 {
                v ^= Self::R.0;
            }
        }
        Self(z)
    }
}

impl From<[u8; BLOCK_LEN]> for Gf128 {
    fn from(bytes: [u8; BLOCK_LEN]) -> Self {
        Self::from_bytes(bytes)
    }
}

impl From<Gf128> for [u8; BLOCK_LEN] {
    fn from(value: Gf128) -> Self {
        value.to_bytes()
    }
}

/// Addition in GF(2^128) is XOR.
impl BitXor for Gf128 {
    type Output = Self;

    fn bitxor(self, rhs: Self) -> Self {
        Self(self.0 ^ rhs.0)
    }
}

impl BitXorAssign for Gf128 {
    fn bitxor_assign(&mut self, rhs: Self) {
        self.0 ^= rhs.0;
    }
}

/// `AES_K(block)` for a 16- or 32-byte key (FIPS-197).
pub fn aes_block(key: &[u8], block: [u8; BLOCK_LEN]) -> Result<[u8; BLOCK_LEN], GcmError> {
    if let Ok(key) = <&[u8; 16]>::try_from(key) {
        Ok(aes128_block(key, block))
    } else if let Ok(key) = <&[u8; 32]>::try_from(key) {
        Ok(aes256_block(key, block))
    } else {
        Err(GcmError::KeyLength(key.len()))
    }
}

/// `AES-128_K(block)`.
pub fn aes128_block(key: &[u8; 16], block: [u8; BLOCK_LEN]) -> [u8; BLOCK_LEN] {
    let mut b = Block::from(block);
    Aes128::new(key.into()).encrypt_block(&mut b);
    b.into()
}

/// `AES-256_K(block)`.
pub fn aes256_block(key: &[u8; 32], block: [u8; BLOCK_LEN]) -> [u8; BLOCK_LEN] {
    let mut b = Block::from(block);
    Aes256::new(key.into()).encrypt_block(&mut b);
    b.into()
}

/// The GHASH key of a session: H = AES_K(0^128) (SP 800-38D 7.1 step 1).
pub fn ghash_key(key: &[u8]) -> Result<[u8; BLOCK_LEN], GcmError> {
    aes_block(key, [0; BLOCK_LEN])
}

/// How the GHASH of a record (and so its tag) changes when ciphertext bytes
/// change.
///
/// The record has `ct_len` ciphertext bytes; each `(offset, xor)` says the
/// bytes from `offset` on change by XOR with `xor`. Changes may share a
/// block or cross block boundaries; a partial last block counts as a block
/// (GHASH pads it with zeros, and zero XOR zero stays zero). Bytes at or
/// past `ct_len` are outside the record and change nothing here.
pub fn tag_delta(h: [u8; BLOCK_LEN], ct_len: usize, changes: &[(usize, &[u8])]) -> [u8; BLOCK_LEN] {
    let blocks = ct_len.div_ceil(BLOCK_LEN);
    let mut per_block = vec![[0u8; BLOCK_LEN]; blocks];
    for &(offset, xor) in changes {
        for (pos, byte) in (offset..ct_len).zip(xor) {
            per_block[pos / BLOCK_LEN][pos % BLOCK_LEN] ^= byte;
        }
    }
    let h = Gf128::from_bytes(h);
    let n = blocks as u64;
    let mut sum = Gf128::ZERO;
    for (k, d) in (1u64..).zip(&per_block) {
        let d = Gf128::from_bytes(*d);
        if d != Gf128::ZERO {
            sum ^= d * h.pow(n - k + 2);
        }
    }
    sum.to_bytes()
}

#[cfg(test)]
mod tests {
    use aes_gcm::aead::{Aead, KeyInit as _, Payload};
    use aes_gcm::{Aes128Gcm, Aes256Gcm, Nonce};
    use rand::Rng;

    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn unhex16(s: &str) -> [u8; 16] {
        unhex(s).try_into().unwrap()
    }

    /// GHASH(H, A, C), SP 800-38D 6.4 and 7.1 step 5, from the model's multiply.
    fn ghash(h: [u8; 16], aad: &[u8], ct: &[u8]) -> [u8; 16] {
        let h = Gf128::from_bytes(h);
        let mut x = Gf128::ZERO;
        for chunk in aad.chunks(16).chain(ct.chunks(16)) {
            let mut block = [0u8; 16];
            block[..chunk.len()].copy_from_slice(chunk);
            x = (x ^ Gf128::from_bytes(block)) * h;
        }
        let lengths = ((aad.len() as u128 * 8) << 64) | (ct.len() as u128 * 8);
        ((x ^ Gf128(lengths)) * h).to_bytes()
    }

    /// Runs `$op` with the `aes-gcm` cipher of the key's size (16 or 32 bytes) bound to `$c`.
    macro_rules! with_gcm {
        ($key:expr, |$c:ident| $op:expr) => {
            match $key.len() {
                16 => {
                    let $c = Aes128Gcm::new_from_slice($key).unwrap();
                    $op
                }
                _ => {
                    let $c = Aes256Gcm::new_from_slice($key).unwrap();
                    $op
                }
            }
        };
    }

    /// AES-GCM by the `aes-gcm` crate: ciphertext || tag.
    fn seal(key: &[u8], nonce: &[u8], aad: &[u8], msg: &[u8]) -> Vec<u8> {
        let (nonce, payload) = (Nonce::from_slice(nonce), Payload { msg, aad });
        with_gcm!(key, |c| c.encrypt(nonce, payload)).unwrap()
    }

    /// The plaintext if the tag verifies.
    fn open(key: &[u8], nonce: &[u8], aad: &[u8], msg: &[u8]) -> Option<Vec<u8>> {
        let (nonce, payload) = (Nonce::from_slice(nonce), Payload { msg, aad });
        with_gcm!(key, |c| c.decrypt(nonce, payload)).ok()
    }

    struct KnownAnswer {
        name: &'static str,
        key: &'static str,
        iv: &'static str,
        aad: &'static str,
        pt: &'static str,
        ct: &'static str,
        h: &'static str,
        ghash: &'static str,
        tag: &'static str,
    }

    const K3: &str = "feffe9928665731c6d6a8f9467308308";
    const K15: &str = "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308";
    const IV3: &str = "cafebabefacedbaddecaf888";
    const A4: &str = "feedfacedeadbeeffeedfacedeadbeefabaddad2";
    const P3: &str = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
                      1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255";
    const C3: &str = "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e\
                      21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985";
    const C15: &str = "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
                       8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad";

    /// McGrew and Viega, "The Galois/Counter Mode of Operation (GCM)",
    /// revised 2005, appendix B: test cases 1-4 (AES-128) and 13-16
    /// (AES-256), with their H, GHASH(H, A, C) and T. Cases 4 and 16 are
    /// 60-byte prefixes of 3 and 15 (a partial last block) with an AAD.
    const KNOWN: [KnownAnswer; 8] = [
        KnownAnswer {
            name: "1",
            key: "00000000000000000000000000000000",
            iv: "000000000000000000000000",
            aad: "",
            pt: "",
            ct: "",
            h: "66e94bd4ef8a2c3b884cfa59ca342b2e",
            ghash: "00000000000000000000000000000000",
            tag: "58e2fccefa7e3061367f1d57a4e7455a",
        },
        KnownAnswer {
            name: "2",
            key: "00000000000000000000000000000000",
            iv: "000000000000000000000000",
            aad: "",
            pt: "00000000000000000000000000000000",
            ct: "0388dace60b6a392f328c2b971b2fe78",
            h: "66e94bd4ef8a2c3b884cfa59ca342b2e",
            ghash: "f38cbb1ad69223dcc3457ae5b6b0f885",
            tag: "ab6e47d42cec13bdf53a67b21257bddf",
        },
        KnownAnswer {
            name: "3",
            key: K3,
            iv: IV3,
            aad: "",
            pt: P3,
            ct: C3,
            h: "b83b533708bf535d0aa6e52980d53b78",
            ghash: "7f1b32b81b820d02614f8895ac1d4eac",
            tag: "4d5c2af327cd64a62cf35abd2ba6fab4",
        },
        KnownAnswer {
            name: "4",
            key: K3,
            iv: IV3,
            aad: A4,
            pt: P3.split_at(120).0,
            ct: C3.split_at(120).0,
            h: "b83b533708bf535d0aa6e52980d53b78",
            ghash: "698e57f70e6ecc7fd9463b7260a9ae5f",
            tag: "5bc94fbc3221a5db94fae95ae7121a47",
        },
        KnownAnswer {
            name: "13",
            key: "0000000000000000000000000000000000000000000000000000000000000000",
            iv: "000000000000000000000000",
            aad: "",
            pt: "",
            ct: "",
            h: "dc95c078a2408989ad48a21492842087",
            ghash: "00000000000000000000000000000000",
            tag: "530f8afbc74536b9a963b4f1c4cb738b",
        },
        KnownAnswer {
            name: "14",
            key: "0000000000000000000000000000000000000000000000000000000000000000",
            iv: "000000000000000000000000",
            aad: "",
            pt: "00000000000000000000000000000000",
            ct: "cea7403d4d606b6e074ec5d3baf39d18",
            h: "dc95c078a2408989ad48a21492842087",
            ghash: "83de425c5edc5d498f382c441041ca92",
            tag: "d0d1c8a799996bf0265b98b5d48ab919",
        },
        KnownAnswer {
            name: "15",
            key: K15,
            iv: IV3,
            aad: "",
            pt: P3,
            ct: C15,
            h: "acbef20579b4b8ebce889bac8732dad7",
            ghash: "4db870d37cb75fcb46097c36230d1612",
            tag: "b094dac5d93471bdec1a502270e3cc6c",
        },
        KnownAnswer {
            name: "16",
            key: K15,
            iv: IV3,
            aad: A4,
            pt: P3.split_at(120).0,
            ct: C15.split_at(120).0,
            h: "acbef20579b4b8ebce889bac8732dad7",
            ghash: "8bd0c4d8aacd391e67cca447e8c38f65",
            tag: "76fc6ece0f4e1768cddf8853bb2d551b",
        },
    ];

    #[test]
    fn h_ghash_and_tag_match_the_gcm_paper() {
        for case in &KNOWN {
            let name = case.name;
            let (key, iv, aad) = (unhex(case.key), unhex(case.iv), unhex(case.aad));
            let (ct, h) = (unhex(case.ct), unhex16(case.h));
            assert_eq!(ghash_key(&key).unwrap(), h, "H, case {name}");
            let s = ghash(h, &aad, &ct);
            assert_eq!(s, unhex16(case.ghash), "GHASH, case {name}");
            // T = GHASH xor E_K(J0), J0 = IV || 0^31 || 1.
            let mut j0 = [0u8; 16];
            j0[..12].copy_from_slice(&iv);
            j0[15] = 1;
            let mask = Gf128::from_bytes(aes_block(&key, j0).unwrap());
            let tag = (Gf128::from_bytes(s) ^ mask).to_bytes();
            assert_eq!(tag, unhex16(case.tag), "T, case {name}");
            // The oracle of the other tests agrees with the paper too.
            let sealed = seal(&key, &iv, &aad, &unhex(case.pt));
            assert_eq!(sealed, [ct, tag.to_vec()].concat(), "aes-gcm, case {name}");
        }
    }

    #[test]
    fn multiply_matches_the_gcm_paper() {
        // Test case 2: X1 = C1 * H.
        let c1 = Gf128::from_bytes(unhex16("0388dace60b6a392f328c2b971b2fe78"));
        let h = Gf128::from_bytes(unhex16("66e94bd4ef8a2c3b884cfa59ca342b2e"));
        let x1 = Gf128::from_bytes(unhex16("5e2ec746917062882c85b0685353deb7"));
        assert_eq!(c1 * h, x1);
        assert_eq!(h * c1, x1);
    }

    #[test]
    fn multiply_is_a_field_product() {
        let mut rng = rand::thread_rng();
        // x * x^127 = x^128 = R: the one step that reduces.
        assert_eq!(Gf128(1 << 126) * Gf128(1), Gf128::R);
        assert_eq!(Gf128::R.to_bytes()[0], 0xe1);
        assert_eq!(
            Gf128::ONE.to_bytes(),
            unhex16("80000000000000000000000000000000")
        );
        for _ in 0..64 {
            let (a, b, c) = (Gf128(rng.gen()), Gf128(rng.gen()), Gf128(rng.gen()));
            assert_eq!(a * Gf128::ONE, a);
            assert_eq!(Gf128::ZERO * a, Gf128::ZERO);
            assert_eq!(a * b, b * a);
            assert_eq!((a * b) * c, a * (b * c));
            assert_eq!(a * (b ^ c), (a * b) ^ (a * c));
            assert_eq!(a.pow(0), Gf128::ONE);
            assert_eq!(a.pow(5), a * a * a * a * a);
            assert_eq!(Gf128::from(<[u8; 16]>::from(a)), a);
        }
    }

    #[test]
    fn aes_matches_fips_197_and_refuses_other_key_lengths() {
        let pt = unhex16("00112233445566778899aabbccddeeff");
        let k128: Vec<u8> = (0..16).collect();
        let k256: Vec<u8> = (0..32).collect();
        let c1 = unhex16("69c4e0d86a7b0430d8cdb78070b4c55a");
        let c3 = unhex16("8ea2b7ca516745bfeafc49904b496089");
        assert_eq!(aes_block(&k128, pt), Ok(c1));
        assert_eq!(aes_block(&k256, pt), Ok(c3));
        assert_eq!(ghash_key(&[0; 24]), Err(GcmError::KeyLength(24)));
        assert_eq!(ghash_key(&[]), Err(GcmError::KeyLength(0)));
    }

    /// Random changes to `ct`, sorted and disjoint, some sharing a block,
    /// some crossing a boundary, one at the very end.
    fn random_changes(rng: &mut impl Rng, ct_len: usize) -> Vec<(usize, Vec<u8>)> {
        let mut changes = Vec::new();
        let mut pos = 0;
        while pos < ct_len {
            let len = rng.gen_range(1..=(ct_len - pos).min(40));
            let xor: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            changes.push((pos, xor));
            pos += len + rng.gen_range(0..24);
        }
        if let Some(&(off, ref xor)) = changes.last() {
            if off + xor.len() < ct_len {
                changes.push((ct_len - 1, vec![rng.gen_range(1..=255)]));
            }
        }
        changes
    }

    #[test]
    fn tag_delta_is_the_change_of_ghash() {
        let mut rng = rand::thread_rng();
        for ct_len in [1, 15, 16, 17, 31, 32, 33, 100, 1000] {
            for aad_len in [0, 5, 13] {
                let h: [u8; 16] = rng.gen();
                let aad: Vec<u8> = (0..aad_len).map(|_| rng.gen()).collect();
                let ct: Vec<u8> = (0..ct_len).map(|_| rng.gen()).collect();
                let changes = random_changes(&mut rng, ct_len);
                let mut patched = ct.clone();
                for (off, xor) in &changes {
                    for (i, d) in xor.iter().enumerate() {
                        patched[off + i] ^= d;
                    }
                }
                let want = Gf128::from_bytes(ghash(h, &aad, &ct))
                    ^ Gf128::from_bytes(ghash(h, &aad, &patched));
                let views: Vec<(usize, &[u8])> =
                    changes.iter().map(|(o, x)| (*o, &x[..])).collect();
                assert_eq!(
                    tag_delta(h, ct_len, &views),
                    want.to_bytes(),
                    "ct_len {ct_len}"
                );
            }
        }
    }

    #[test]
    fn tag_delta_of_no_change_is_zero() {
        let h = [7; 16];
        assert_eq!(tag_delta(h, 0, &[]), [0; 16]);
        assert_eq!(tag_delta(h, 100, &[]), [0; 16]);
        assert_eq!(tag_delta(h, 100, &[(3, &[0, 0, 0])]), [0; 16]);
        // Past the record: nothing to change.
        assert_eq!(tag_delta(h, 16, &[(16, &[1, 2])]), [0; 16]);
        assert_eq!(
            tag_delta(h, 16, &[(15, &[1, 2])]),
            tag_delta(h, 16, &[(15, &[1])])
        );
    }

    const PLACEHOLDER: &[u8] = b"kloak-ph:7f3a9c21e0b84d55";

    /// Encrypts a record holding the placeholder at `at`, patches it the
    /// way the kernel does with GHASH key `h`, and decrypts it.
    fn patch_and_open(
        rng: &mut impl Rng,
        key: &[u8],
        h: [u8; 16],
        pt_len: usize,
        at: &[usize],
        value: &[u8],
    ) -> (Option<Vec<u8>>, Vec<u8>) {
        let nonce: [u8; 12] = rng.gen();
        let aad_len = if rng.gen() { 13 } else { 5 };
        let aad: Vec<u8> = (0..aad_len).map(|_| rng.gen()).collect();
        let mut pt: Vec<u8> = (0..pt_len).map(|_| rng.gen()).collect();
        for &off in at {
            pt[off..off + PLACEHOLDER.len()].copy_from_slice(PLACEHOLDER);
        }
        let mut record = seal(key, &nonce, &aad, &pt);
        let d: Vec<u8> = PLACEHOLDER.iter().zip(value).map(|(p, v)| p ^ v).collect();
        let changes: Vec<(usize, &[u8])> = at.iter().map(|&off| (off, &d[..])).collect();
        for &off in at {
            for (i, x) in d.iter().enumerate() {
                record[off + i] ^= x;
            }
        }
        let delta = tag_delta(h, pt_len, &changes);
        for (t, x) in record[pt_len..].iter_mut().zip(delta) {
            *t ^= x;
        }
        let mut want = pt;
        for &off in at {
            want[off..off + value.len()].copy_from_slice(value);
        }
        (open(key, &nonce, &aad, &record), want)
    }

    /// Offsets for the placeholder: the start, across a block boundary
    /// (twice in one record), a random spot, and flush with the end.
    fn offsets(rng: &mut impl Rng, pt_len: usize) -> Vec<usize> {
        let n = PLACEHOLDER.len();
        let random = rng.gen_range(120..=pt_len - 2 * n);
        vec![0, 29, 87, random, pt_len - n]
    }

    #[test]
    fn patched_records_verify_with_aes_gcm() {
        let mut rng = rand::thread_rng();
        for key_len in [16, 32] {
            for pt_len in [rng.gen_range(200..400), 256, 257, 16385] {
                let key: Vec<u8> = (0..key_len).map(|_| rng.gen()).collect();
                let h = ghash_key(&key).unwrap();
                let value: Vec<u8> = (0..PLACEHOLDER.len()).map(|_| rng.gen()).collect();
                let at = offsets(&mut rng, pt_len);
                let (opened, want) = patch_and_open(&mut rng, &key, h, pt_len, &at, &value);
                let opened =
                    opened.unwrap_or_else(|| panic!("tag rejected: key {key_len}, pt {pt_len}"));
                assert_eq!(opened, want);
            }
        }
    }

    #[test]
    fn a_wrong_h_never_verifies() {
        let mut rng = rand::thread_rng();
        for key_len in [16, 32] {
            for _ in 0..8 {
                let key: Vec<u8> = (0..key_len).map(|_| rng.gen()).collect();
                let mut h = ghash_key(&key).unwrap();
                h[rng.gen_range(0..16)] ^= 1 << rng.gen_range(0..8);
                let value: Vec<u8> = (0..PLACEHOLDER.len()).map(|_| rng.gen()).collect();
                let pt_len = rng.gen_range(200..400);
                let at = offsets(&mut rng, pt_len);
                let (opened, _) = patch_and_open(&mut rng, &key, h, pt_len, &at, &value);
                assert!(
                    opened.is_none(),
                    "a wrong H verified (key {key_len}, pt {pt_len})"
                );
            }
        }
    }
}
