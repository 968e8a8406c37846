//! The load-time self-test of the kernel's GCM arithmetic.
//!
//! A wrong AES round or GF(2^128) multiply in the kernel would not fail
//! loudly: it would put tags on the wire that the server rejects, which
//! looks like a flaky network. So before the ciphertext strategy is used,
//! the loader runs `handle_gcm_selftest` (a `BPF_PROG_TYPE_SYSCALL`
//! program) on known answers and random inputs, and compares each answer
//! with the model in the parent module.

use std::error::Error as StdError;
use std::fmt;

use rand::Rng;
use thiserror::Error;

use super::{aes128_block, aes256_block, tag_delta, Gf128, BLOCK_LEN};
use crate::dataplane::skel::types::{kloak_gcm_op, kloak_gcm_selftest};

/// Random keys per AES key size, on top of the FIPS-197 vectors.
const RANDOM_AES_CASES: usize = 4;
/// Random pairs for the multiply, on top of the edge cases.
const RANDOM_MUL_CASES: usize = 16;
/// Record sizes: one byte, around the first block boundary, a typical
/// request, a page, and TLS's largest record plus one byte (partial block).
const TAG_DELTA_CT_LENS: [u32; 7] = [1, 15, 16, 17, 100, 4096, 16385];
/// The size of `kloak_gcm_selftest.delta`.
const MAX_DELTA_LEN: u32 = 64;
/// What `out` holds before each run: no case expects it, so an op that
/// leaves `out` unwritten fails even where the right answer is zero.
const OUT_SENTINEL: [u8; BLOCK_LEN] = [0xa5; BLOCK_LEN];

/// FIPS-197 appendix C.1 (AES-128) and C.3 (AES-256): one plaintext, two keys.
const FIPS_PLAINTEXT: [u8; 16] = hex16(0x00112233_44556677_8899aabb_ccddeeff);
const FIPS_AES128_CIPHERTEXT: [u8; 16] = hex16(0x69c4e0d8_6a7b0430_d8cdb780_70b4c55a);
const FIPS_AES256_CIPHERTEXT: [u8; 16] = hex16(0x8ea2b7ca_516745bf_eafc4990_4b496089);

const fn hex16(v: u128) -> [u8; 16] {
    v.to_be_bytes()
}

/// The operations of `enum kloak_gcm_op`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelftestOp {
    AesBlock,
    Mul,
    TagDelta,
}

impl SelftestOp {
    fn code(self) -> u32 {
        match self {
            Self::AesBlock => kloak_gcm_op::KLOAK_GCM_AES_BLOCK.0,
            Self::Mul => kloak_gcm_op::KLOAK_GCM_MUL.0,
            Self::TagDelta => kloak_gcm_op::KLOAK_GCM_TAG_DELTA.0,
        }
    }
}

impl fmt::Display for SelftestOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::AesBlock => "AES_BLOCK",
            Self::Mul => "MUL",
            Self::TagDelta => "TAG_DELTA",
        })
    }
}

/// Why the kernel's GCM arithmetic cannot be trusted. `case` describes the
/// inputs; they are random test values, never session keys.
#[derive(Debug, Error)]
pub enum GcmSelftestError {
    #[error("GCM self-test {op} ({case}): running the program failed")]
    Run {
        op: SelftestOp,
        case: String,
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    #[error("GCM self-test {op} ({case}): the program refused it (result {result})")]
    Refused {
        op: SelftestOp,
        case: String,
        result: u32,
    },
    #[error("GCM self-test {op} ({case}): kernel gave {got}, expected {expected}")]
    Mismatch {
        op: SelftestOp,
        case: String,
        got: String,
        expected: String,
    },
}

/// One question for the kernel and the model's answer.
struct Case {
    op: SelftestOp,
    what: String,
    input: kloak_gcm_selftest,
    expected: [u8; BLOCK_LEN],
}

/// Runs every case through `run`, which must execute the kernel's
/// self-test program on the struct in place; stops at the first wrong or
/// refused answer.
///
/// `E` is whatever the caller's runner fails with (`libbpf_rs::Error`,
/// `anyhow::Error`, ...); it is kept as the error's source.
pub fn check_kernel<E>(
    mut run: impl FnMut(&mut kloak_gcm_selftest) -> Result<(), E>,
) -> Result<(), GcmSelftestError>
where
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    let mut rng = rand::thread_rng();
    let cases = aes_cases(&mut rng)
        .into_iter()
        .chain(mul_cases(&mut rng))
        .chain(tag_delta_cases(&mut rng));
    for case in cases {
        check_case(&mut run, case)?;
    }
    Ok(())
}

fn check_case<E>(
    run: &mut impl FnMut(&mut kloak_gcm_selftest) -> Result<(), E>,
    case: Case,
) -> Result<(), GcmSelftestError>
where
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    let Case {
        op,
        what,
        mut input,
        expected,
    } = case;
    input.op = op.code();
    input.out = OUT_SENTINEL;
    if let Err(e) = run(&mut input) {
        return Err(GcmSelftestError::Run {
            op,
            case: what,
            source: e.into(),
        });
    }
    if input.result != 0 {
        return Err(GcmSelftestError::Refused {
            op,
            case: what,
            result: input.result,
        });
    }
    if input.out != expected {
        return Err(GcmSelftestError::Mismatch {
            op,
            case: what,
            got: hex(&input.out),
            expected: hex(&expected),
        });
    }
    Ok(())
}

fn aes_case(key: &[u8], x: [u8; BLOCK_LEN], what: String, expected: [u8; BLOCK_LEN]) -> Case {
    let mut input = kloak_gcm_selftest::default();
    input.key[..key.len()].copy_from_slice(key);
    // 16 or 32, from the callers' arrays.
    input.key_len = key.len() as u32;
    input.x = x;
    Case {
        op: SelftestOp::AesBlock,
        what,
        input,
        expected,
    }
}

/// FIPS-197's vectors (known answers, not the model's), then random keys.
fn aes_cases(rng: &mut impl Rng) -> Vec<Case> {
    let fips128: [u8; 16] = std::array::from_fn(|i| i as u8);
    let fips256: [u8; 32] = std::array::from_fn(|i| i as u8);
    let mut cases = vec![
        aes_case(
            &fips128,
            FIPS_PLAINTEXT,
            "AES-128 FIPS-197 C.1".into(),
            FIPS_AES128_CIPHERTEXT,
        ),
        aes_case(
            &fips256,
            FIPS_PLAINTEXT,
            "AES-256 FIPS-197 C.3".into(),
            FIPS_AES256_CIPHERTEXT,
        ),
    ];
    for _ in 0..RANDOM_AES_CASES {
        let (key, x): ([u8; 16], [u8; 16]) = (rng.gen(), rng.gen());
        let what = format!("AES-128 key={} x={}", hex(&key), hex(&x));
        cases.push(aes_case(&key, x, what, aes128_block(&key, x)));
        let (key, x): ([u8; 32], [u8; 16]) = (rng.gen(), rng.gen());
        let what = format!("AES-256 key={} x={}", hex(&key), hex(&x));
        cases.push(aes_case(&key, x, what, aes256_block(&key, x)));
    }
    cases
}

fn mul_case(x: Gf128, y: Gf128) -> Case {
    let input = kloak_gcm_selftest {
        x: x.to_bytes(),
        y: y.to_bytes(),
        ..Default::default()
    };
    Case {
        op: SelftestOp::Mul,
        what: format!("x={} y={}", hex(&input.x), hex(&input.y)),
        input,
        expected: (x * y).to_bytes(),
    }
}

/// Zero and one on either side, the reductions (x * x^127 = R, x^127 *
/// x^127, all ones squared), then random pairs.
fn mul_cases(rng: &mut impl Rng) -> Vec<Case> {
    let r = Gf128(rng.gen());
    let x = Gf128(1 << 126);
    let x127 = Gf128(1);
    let all = Gf128(u128::MAX);
    let mut cases = vec![
        mul_case(Gf128::ZERO, r),
        mul_case(r, Gf128::ZERO),
        mul_case(Gf128::ONE, r),
        mul_case(r, Gf128::ONE),
        mul_case(x, x127),
        mul_case(x127, x127),
        mul_case(all, all),
    ];
    cases.extend((0..RANDOM_MUL_CASES).map(|_| mul_case(Gf128(rng.gen()), Gf128(rng.gen()))));
    cases
}

/// Where changes go in a record of `ct_len` bytes, as (offset, len): the
/// first byte, the first block, the last byte, the record's tail, straddling
/// the first and the last block boundary, and a random placement.
/// `ct_len` is at least 1; placements that would not fit are dropped.
fn placements(ct_len: u32, rng: &mut impl Rng) -> Vec<(u32, u32)> {
    let max = ct_len.min(MAX_DELTA_LEN);
    let block = BLOCK_LEN as u32;
    let last_boundary = (ct_len - 1) / block * block;
    let len = rng.gen_range(1..=max);
    let mut all = vec![
        (0, 1),
        (0, max),
        (ct_len - 1, 1),
        (ct_len - max, max),
        (ct_len - len, len),
        (rng.gen_range(0..=ct_len - len), len),
    ];
    for boundary in [block, last_boundary] {
        all.push((boundary.wrapping_sub(1), 2));
        all.push((boundary.wrapping_sub(max / 2), max));
    }
    all.retain(|&(off, len)| len >= 1 && off.checked_add(len).is_some_and(|end| end <= ct_len));
    all.sort_unstable();
    all.dedup();
    all
}

fn tag_delta_cases(rng: &mut impl Rng) -> Vec<Case> {
    let mut cases = Vec::new();
    for ct_len in TAG_DELTA_CT_LENS {
        for (off, len) in placements(ct_len, rng) {
            let mut input = kloak_gcm_selftest {
                x: rng.gen(),
                ct_len,
                delta_off: off,
                delta_len: len,
                ..Default::default()
            };
            // Every byte changes, so no case degenerates to a zero delta.
            for d in &mut input.delta[..len as usize] {
                *d = rng.gen_range(1..=u8::MAX);
            }
            let expected = tag_delta(
                input.x,
                ct_len as usize,
                &[(off as usize, &input.delta[..len as usize])],
            );
            cases.push(Case {
                op: SelftestOp::TagDelta,
                what: format!("ct_len={ct_len} delta_off={off} delta_len={len}"),
                input,
                expected,
            });
        }
    }
    cases
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;
    use crate::dataplane::gcm::aes_block;

    /// The kernel's contract, implemented with the model.
    fn model(t: &mut kloak_gcm_selftest) -> Result<(), Infallible> {
        let op = kloak_gcm_op(t.op);
        if op == kloak_gcm_op::KLOAK_GCM_AES_BLOCK {
            match aes_block(&t.key[..t.key_len as usize], t.x) {
                Ok(out) => t.out = out,
                Err(_) => t.result = 1,
            }
        } else if op == kloak_gcm_op::KLOAK_GCM_MUL {
            t.out = (Gf128::from_bytes(t.x) * Gf128::from_bytes(t.y)).to_bytes();
        } else if op == kloak_gcm_op::KLOAK_GCM_TAG_DELTA {
            let (off, len) = (t.delta_off as usize, t.delta_len as usize);
            t.out = tag_delta(t.x, t.ct_len as usize, &[(off, &t.delta[..len])]);
        } else {
            t.result = 1;
        }
        Ok(())
    }

    #[test]
    fn the_model_passes() {
        check_kernel(model).unwrap();
    }

    #[test]
    fn every_op_and_record_size_is_asked() {
        let mut seen = Vec::new();
        check_kernel(|t: &mut kloak_gcm_selftest| {
            seen.push((t.op, t.ct_len, t.delta_off, t.delta_len));
            model(t)
        })
        .unwrap();
        for op in [SelftestOp::AesBlock, SelftestOp::Mul, SelftestOp::TagDelta] {
            assert!(seen.iter().any(|s| s.0 == op.code()), "{op} never asked");
        }
        let tag = kloak_gcm_op::KLOAK_GCM_TAG_DELTA.0;
        for ct_len in TAG_DELTA_CT_LENS {
            assert!(
                seen.iter().any(|s| s.0 == tag && s.1 == ct_len),
                "ct_len {ct_len}"
            );
        }
        let crosses = |&(op, _, off, len): &(u32, u32, u32, u32)| {
            op == tag && off / 16 != (off + len - 1) / 16
        };
        assert!(seen.iter().any(crosses), "no block-crossing change");
        let partial_tail = |&(op, ct_len, off, len): &(u32, u32, u32, u32)| {
            op == tag && ct_len % 16 != 0 && off + len == ct_len
        };
        assert!(
            seen.iter().any(partial_tail),
            "no change in a partial last block"
        );
    }

    #[test]
    fn placements_stay_inside_the_record() {
        let mut rng = rand::thread_rng();
        for ct_len in TAG_DELTA_CT_LENS {
            for (off, len) in placements(ct_len, &mut rng) {
                assert!((1..=MAX_DELTA_LEN).contains(&len));
                assert!(off + len <= ct_len);
            }
        }
        assert_eq!(placements(1, &mut rng), vec![(0, 1)]);
        assert!(placements(17, &mut rng).contains(&(15, 2)));
    }

    #[test]
    fn a_multiply_without_reduction_is_caught() {
        let err = check_kernel(|t: &mut kloak_gcm_selftest| {
            model(t)?;
            if t.op == kloak_gcm_op::KLOAK_GCM_MUL.0 {
                // Carry-less product's high half only: no R folded in.
                let (x, y) = (Gf128::from_bytes(t.x).0, Gf128::from_bytes(t.y).0);
                let mut z = 0u128;
                for i in 0..128 {
                    if (x >> (127 - i)) & 1 == 1 {
                        z ^= y >> i;
                    }
                }
                t.out = z.to_be_bytes();
            }
            Ok::<(), Infallible>(())
        })
        .unwrap_err();
        let GcmSelftestError::Mismatch { op, case, .. } = &err else {
            panic!("{err}");
        };
        assert_eq!(*op, SelftestOp::Mul);
        assert!(case.starts_with("x="), "{case}");
        assert!(
            err.to_string().starts_with("GCM self-test MUL (x="),
            "{err}"
        );
    }

    #[test]
    fn an_off_by_one_power_of_h_is_caught() {
        let err = check_kernel(|t: &mut kloak_gcm_selftest| {
            model(t)?;
            if t.op == kloak_gcm_op::KLOAK_GCM_TAG_DELTA.0 {
                // Sum D_k * H^(n-k+1): the lengths block forgotten.
                let h = Gf128::from_bytes(t.x);
                let n = (t.ct_len as usize).div_ceil(BLOCK_LEN);
                let mut blocks = vec![0u8; n * BLOCK_LEN];
                let off = t.delta_off as usize;
                for (i, d) in t.delta[..t.delta_len as usize].iter().enumerate() {
                    blocks[off + i] ^= d;
                }
                let mut sum = Gf128::ZERO;
                for (k, d) in (1u64..).zip(blocks.chunks_exact(BLOCK_LEN)) {
                    let d = Gf128::from_bytes(d.try_into().unwrap());
                    sum ^= d * h.pow(n as u64 - k + 1);
                }
                t.out = sum.to_bytes();
            }
            Ok::<(), Infallible>(())
        })
        .unwrap_err();
        assert!(
            matches!(
                err,
                GcmSelftestError::Mismatch {
                    op: SelftestOp::TagDelta,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("ct_len=1 "), "{err}");
    }

    #[test]
    fn a_wrong_aes_is_caught_on_the_fips_vector() {
        let err = check_kernel(|t: &mut kloak_gcm_selftest| {
            model(t)?;
            if t.op == kloak_gcm_op::KLOAK_GCM_AES_BLOCK.0 {
                t.out[15] ^= 1;
            }
            Ok::<(), Infallible>(())
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "GCM self-test AES_BLOCK (AES-128 FIPS-197 C.1): kernel gave \
             69c4e0d86a7b0430d8cdb78070b4c55b, expected 69c4e0d86a7b0430d8cdb78070b4c55a"
        );
    }

    #[test]
    fn an_unwritten_answer_is_caught_even_where_it_is_zero() {
        let err = check_kernel(|t: &mut kloak_gcm_selftest| {
            if t.op != kloak_gcm_op::KLOAK_GCM_MUL.0 || t.x != [0; 16] {
                model(t)?;
            }
            Ok::<(), Infallible>(())
        })
        .unwrap_err();
        assert!(
            matches!(
                err,
                GcmSelftestError::Mismatch {
                    op: SelftestOp::Mul,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn refusals_and_runner_errors_are_reported() {
        let err = check_kernel(|t: &mut kloak_gcm_selftest| {
            t.result = 7;
            Ok::<(), Infallible>(())
        })
        .unwrap_err();
        assert!(
            matches!(
                err,
                GcmSelftestError::Refused {
                    op: SelftestOp::AesBlock,
                    result: 7,
                    ..
                }
            ),
            "{err}"
        );

        let err =
            check_kernel(|_: &mut kloak_gcm_selftest| Err(anyhow::anyhow!("EPERM"))).unwrap_err();
        let GcmSelftestError::Run { source, .. } = &err else {
            panic!("{err}");
        };
        assert_eq!(source.to_string(), "EPERM");
    }
}
