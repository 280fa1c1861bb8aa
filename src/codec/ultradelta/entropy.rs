//! Entropy coding of the kept quantization codes: an order-0 rANS coder (the default) or zstd.
//!
//! rANS section layout, little-endian:
//!
//! | bytes | field |
//! |---|---|
//! | 2 | `S`, number of distinct symbols (0 only when there are no codes) |
//! | 3 × S | symbol (u8, strictly increasing) and frequency (u16, at least 1); frequencies sum to 2^14 |
//! | 4 | `B`, number of blocks, which must be `ceil(count / 2^20)` |
//! | 4 × B | byte length of each block |
//! | … | the blocks |
//!
//! Each block codes up to 2^20 symbols independently, so blocks encode and decode in parallel
//! and the bytes do not depend on the thread count. A block starts with the 32-bit final encoder
//! state (big-endian), followed by the renormalisation bytes in decoding order. The decoder
//! requires the state to return to its initial value and every byte to be consumed.

use rayon::prelude::*;

use super::UltraDeltaError;

const SCALE_BITS: u32 = 14;
const SCALE: u32 = 1 << SCALE_BITS;
/// Lower bound of the normalised state interval `[L, 256 L)`.
const STATE_LOW: u32 = 1 << 23;
const BLOCK_SYMBOLS: usize = 1 << 20;

/// Value coding, with its code in the object header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueCoding {
    Rans,
    Zstd,
}

impl ValueCoding {
    pub(crate) fn code(self) -> u8 {
        match self {
            Self::Rans => 0,
            Self::Zstd => 1,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::Rans),
            1 => Some(Self::Zstd),
            _ => None,
        }
    }
}

/// zstd level used when zstd codes the values; the module docs of `mod.rs` compare it with rANS.
pub(crate) const ZSTD_LEVEL: i32 = 19;

pub(crate) fn encode(coding: ValueCoding, codes: &[u8]) -> Vec<u8> {
    match coding {
        ValueCoding::Rans => rans_encode(codes),
        // If zstd fails, the empty section fails the decode check that `encode_commit` runs on
        // every object it writes, so the failure is not silent.
        ValueCoding::Zstd => zstd::bulk::compress(codes, ZSTD_LEVEL).unwrap_or_default(),
    }
}

fn corrupt(what: String) -> UltraDeltaError {
    UltraDeltaError::Corrupt(format!("values section: {what}"))
}

/// Decodes exactly `count` codes; the caller must have bounded `count` by the tensor shape.
pub(crate) fn decode(
    coding: ValueCoding,
    section: &[u8],
    count: usize,
) -> Result<Vec<u8>, UltraDeltaError> {
    match coding {
        ValueCoding::Rans => rans_decode(section, count),
        ValueCoding::Zstd => {
            let codes = zstd::bulk::decompress(section, count)
                .map_err(|e| corrupt(format!("zstd: {e}")))?;
            if codes.len() != count {
                return Err(corrupt(format!(
                    "zstd produced {} codes, expected {count}",
                    codes.len()
                )));
            }
            Ok(codes)
        }
    }
}

/// Scales symbol counts to frequencies that sum to 2^14, keeping every present symbol at least 1.
fn normalise(counts: &[u64; 256]) -> [u32; 256] {
    let total: u64 = counts.iter().sum();
    let mut freqs = [0u32; 256];
    if total == 0 {
        return freqs;
    }
    for (f, &c) in freqs.iter_mut().zip(counts) {
        if c > 0 {
            *f = ((u128::from(c) * u128::from(SCALE) / u128::from(total)) as u32).max(1);
        }
    }
    let mut sum: u32 = freqs.iter().sum();
    // The rounding error goes to the most frequent symbol, where it costs the fewest bits.
    while sum != SCALE {
        let largest = (0..256)
            .max_by(|&a, &b| freqs[a].cmp(&freqs[b]).then(b.cmp(&a)))
            .unwrap_or(0);
        if sum < SCALE {
            freqs[largest] += SCALE - sum;
            sum = SCALE;
        } else {
            let excess = (sum - SCALE).min(freqs[largest] - 1).max(1);
            freqs[largest] -= excess;
            sum -= excess;
        }
    }
    freqs
}

fn cumulative(freqs: &[u32; 256]) -> [u32; 257] {
    let mut cum = [0u32; 257];
    for s in 0..256 {
        cum[s + 1] = cum[s] + freqs[s];
    }
    cum
}

fn rans_encode(codes: &[u8]) -> Vec<u8> {
    let mut counts = [0u64; 256];
    for &c in codes {
        counts[usize::from(c)] += 1;
    }
    let freqs = normalise(&counts);
    let cum = cumulative(&freqs);

    let present: Vec<usize> = (0..256).filter(|&s| freqs[s] > 0).collect();
    let mut out = Vec::with_capacity(codes.len() / 2 + 16);
    out.extend_from_slice(&(present.len() as u16).to_le_bytes());
    for &s in &present {
        out.push(s as u8);
        out.extend_from_slice(&(freqs[s] as u16).to_le_bytes());
    }

    let blocks: Vec<Vec<u8>> = codes
        .par_chunks(BLOCK_SYMBOLS)
        .map(|block| rans_encode_block(block, &freqs, &cum))
        .collect();
    out.extend_from_slice(&(blocks.len() as u32).to_le_bytes());
    for block in &blocks {
        out.extend_from_slice(&(block.len() as u32).to_le_bytes());
    }
    for block in &blocks {
        out.extend_from_slice(block);
    }
    out
}

fn rans_encode_block(block: &[u8], freqs: &[u32; 256], cum: &[u32; 257]) -> Vec<u8> {
    let mut reversed = Vec::with_capacity(block.len() / 2 + 8);
    let mut x = STATE_LOW;
    for &s in block.iter().rev() {
        let f = freqs[usize::from(s)];
        let x_max = ((STATE_LOW >> SCALE_BITS) << 8) * f;
        while x >= x_max {
            reversed.push(x as u8);
            x >>= 8;
        }
        x = ((x / f) << SCALE_BITS) + (x % f) + cum[usize::from(s)];
    }
    reversed.extend_from_slice(&x.to_le_bytes());
    reversed.reverse();
    reversed
}

/// Reads `n` bytes at `*at`, advancing it.
fn take<'a>(bytes: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8], UltraDeltaError> {
    let end = at
        .checked_add(n)
        .filter(|&end| end <= bytes.len())
        .ok_or_else(|| corrupt("truncated".into()))?;
    let slice = &bytes[*at..end];
    *at = end;
    Ok(slice)
}

fn rans_decode(section: &[u8], count: usize) -> Result<Vec<u8>, UltraDeltaError> {
    let mut at = 0usize;
    let header = take(section, &mut at, 2)?;
    let symbols = usize::from(u16::from_le_bytes([header[0], header[1]]));
    if symbols > 256 || (symbols == 0) != (count == 0) {
        return Err(corrupt(format!("{symbols} symbols for {count} codes")));
    }
    let mut freqs = [0u32; 256];
    let mut previous: Option<u8> = None;
    for _ in 0..symbols {
        let entry = take(section, &mut at, 3)?;
        let (s, f) = (
            entry[0],
            u32::from(u16::from_le_bytes([entry[1], entry[2]])),
        );
        if previous.is_some_and(|p| s <= p) || f == 0 {
            return Err(corrupt(
                "symbol table not increasing or with a zero frequency".into(),
            ));
        }
        freqs[usize::from(s)] = f;
        previous = Some(s);
    }
    if count > 0 && freqs.iter().sum::<u32>() != SCALE {
        return Err(corrupt("frequencies do not sum to 2^14".into()));
    }
    let cum = cumulative(&freqs);
    let mut slot_symbol = vec![0u8; if count > 0 { SCALE as usize } else { 0 }];
    for s in 0..256 {
        for slot in cum[s]..cum[s + 1] {
            slot_symbol[slot as usize] = s as u8;
        }
    }

    let block_count_bytes = take(section, &mut at, 4)?;
    let block_count = u32::from_le_bytes([
        block_count_bytes[0],
        block_count_bytes[1],
        block_count_bytes[2],
        block_count_bytes[3],
    ]) as usize;
    if block_count != count.div_ceil(BLOCK_SYMBOLS) {
        return Err(corrupt(format!("{block_count} blocks for {count} codes")));
    }
    let mut lengths = Vec::with_capacity(block_count);
    for _ in 0..block_count {
        let b = take(section, &mut at, 4)?;
        lengths.push(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    }
    let mut blocks = Vec::with_capacity(block_count);
    for (i, &len) in lengths.iter().enumerate() {
        let symbols_in_block = (count - i * BLOCK_SYMBOLS).min(BLOCK_SYMBOLS);
        blocks.push((take(section, &mut at, len)?, symbols_in_block));
    }
    if at != section.len() {
        return Err(corrupt("trailing bytes after the last block".into()));
    }

    let decoded: Result<Vec<Vec<u8>>, UltraDeltaError> = blocks
        .par_iter()
        .map(|&(bytes, n)| rans_decode_block(bytes, n, &freqs, &cum, &slot_symbol))
        .collect();
    Ok(decoded?.concat())
}

fn rans_decode_block(
    bytes: &[u8],
    count: usize,
    freqs: &[u32; 256],
    cum: &[u32; 257],
    slot_symbol: &[u8],
) -> Result<Vec<u8>, UltraDeltaError> {
    let mut at = 0usize;
    let state = take(bytes, &mut at, 4)?;
    let mut x = u32::from_be_bytes([state[0], state[1], state[2], state[3]]);
    if !(STATE_LOW..STATE_LOW << 8).contains(&x) {
        return Err(corrupt("block state out of range".into()));
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let slot = x & (SCALE - 1);
        let s = slot_symbol[slot as usize];
        let si = usize::from(s);
        x = freqs[si] * (x >> SCALE_BITS) + slot - cum[si];
        while x < STATE_LOW {
            let byte = *bytes
                .get(at)
                .ok_or_else(|| corrupt("block truncated".into()))?;
            at += 1;
            x = (x << 8) | u32::from(byte);
        }
        out.push(s);
    }
    if x != STATE_LOW || at != bytes.len() {
        return Err(corrupt("block does not end in the initial state".into()));
    }
    Ok(out)
}

/// Order-0 entropy of the codes in bytes, the lower bound both coders are measured against.
#[cfg(test)]
pub(crate) fn entropy_bytes(codes: &[u8]) -> f64 {
    let mut counts = [0u64; 256];
    for &c in codes {
        counts[usize::from(c)] += 1;
    }
    let n = codes.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| -(c as f64) * (c as f64 / n).log2())
        .sum::<f64>()
        / 8.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rans_round_trips_skewed_codes() {
        let codes: Vec<u8> = (0..200_000u32)
            .map(|i| if i % 97 == 0 { (i % 16) as u8 } else { 7 })
            .collect();
        let bytes = rans_encode(&codes);
        assert_eq!(rans_decode(&bytes, codes.len()).unwrap(), codes);
        assert!((bytes.len() as f64) < entropy_bytes(&codes) * 1.05 + 64.0);
    }

    #[test]
    fn rans_round_trips_constant_and_empty() {
        let constant = vec![3u8; 3 * BLOCK_SYMBOLS + 5];
        let bytes = rans_encode(&constant);
        assert_eq!(rans_decode(&bytes, constant.len()).unwrap(), constant);
        let empty = rans_encode(&[]);
        assert_eq!(rans_decode(&empty, 0).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn rans_rejects_wrong_count() {
        let codes = vec![1u8, 2, 3, 1, 1];
        let bytes = rans_encode(&codes);
        assert!(rans_decode(&bytes, 4).is_err());
        assert!(rans_decode(&bytes, 6).is_err());
    }

    #[test]
    fn normalised_frequencies_sum_to_scale() {
        let mut counts = [1u64; 256];
        counts[0] = 1_000_000_000;
        let freqs = normalise(&counts);
        assert_eq!(freqs.iter().sum::<u32>(), SCALE);
        assert!(freqs.iter().all(|&f| f >= 1));
    }

    #[test]
    fn zstd_round_trips() {
        let codes: Vec<u8> = (0..10_000u32).map(|i| (i % 5) as u8).collect();
        let bytes = encode(ValueCoding::Zstd, &codes);
        assert_eq!(
            decode(ValueCoding::Zstd, &bytes, codes.len()).unwrap(),
            codes
        );
    }
}
