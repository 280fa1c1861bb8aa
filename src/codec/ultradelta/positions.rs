//! Kept positions of the grouped mode: Golomb-Rice codes of the gaps, or Elias-Fano, whichever is
//! smaller for the tensor at hand.
//!
//! Both sections start with one parameter byte followed by an LSB-first bit stream padded with
//! zero bits to a whole byte. Rice: for each position, the gap `p_i - p_{i-1} - 1` (with
//! `p_{-1} = -1`) as `gap >> k` one bits, a zero bit, then the low `k` bits. Elias-Fano with `l`
//! low bits: the `m * l` low bits of all positions, then the upper bit vector of
//! `m + (numel >> l) + 1` bits in which position `i` sets bit `(p_i >> l) + i`.

use super::UltraDeltaError;

/// Position coding, with its code in the object header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PositionCoding {
    Rice,
    EliasFano,
}

impl PositionCoding {
    pub(crate) fn code(self) -> u8 {
        match self {
            Self::Rice => 1,
            Self::EliasFano => 2,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Rice),
            2 => Some(Self::EliasFano),
            _ => None,
        }
    }
}

struct BitWriter {
    bytes: Vec<u8>,
    acc: u64,
    len: u32,
}

impl BitWriter {
    fn new(capacity_bits: u64) -> Self {
        Self {
            bytes: Vec::with_capacity((capacity_bits / 8 + 9) as usize),
            acc: 0,
            len: 0,
        }
    }

    /// Appends the low `n <= 32` bits of `value`.
    fn put(&mut self, value: u64, n: u32) {
        debug_assert!(n <= 32);
        if n == 0 {
            return;
        }
        self.acc |= (value & ((1u64 << n) - 1)) << self.len;
        self.len += n;
        while self.len >= 8 {
            self.bytes.push(self.acc as u8);
            self.acc >>= 8;
            self.len -= 8;
        }
    }

    fn put_ones(&mut self, mut count: u64) {
        while count >= 32 {
            self.put(u64::from(u32::MAX), 32);
            count -= 32;
        }
        self.put((1u64 << count) - 1, count as u32);
    }

    fn finish(mut self) -> Vec<u8> {
        if self.len > 0 {
            self.bytes.push(self.acc as u8);
        }
        self.bytes
    }
}

struct BitReader<'a> {
    bytes: &'a [u8],
    bit: u64,
}

impl<'a> BitReader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, bit: 0 }
    }

    fn total_bits(&self) -> u64 {
        self.bytes.len() as u64 * 8
    }

    fn get_bit(&mut self) -> Option<bool> {
        let byte = *self.bytes.get((self.bit / 8) as usize)?;
        let value = (byte >> (self.bit % 8)) & 1 == 1;
        self.bit += 1;
        Some(value)
    }

    /// Reads `n <= 57` bits, LSB first.
    fn get(&mut self, n: u32) -> Option<u64> {
        if self.bit + u64::from(n) > self.total_bits() {
            return None;
        }
        let mut value = 0u64;
        for k in 0..n {
            let byte = self.bytes[((self.bit + u64::from(k)) / 8) as usize];
            value |= u64::from((byte >> ((self.bit + u64::from(k)) % 8)) & 1) << k;
        }
        self.bit += u64::from(n);
        Some(value)
    }

    /// Counts one bits up to the next zero bit, which is consumed.
    fn get_unary(&mut self, limit: u64) -> Option<u64> {
        let mut count = 0u64;
        loop {
            // Whole 0xFF bytes are skipped at once, so long runs stay cheap.
            if self.bit % 8 == 0 {
                while self.bytes.get((self.bit / 8) as usize) == Some(&0xFF) {
                    count += 8;
                    self.bit += 8;
                    if count > limit {
                        return None;
                    }
                }
            }
            if !self.get_bit()? {
                return Some(count);
            }
            count += 1;
            if count > limit {
                return None;
            }
        }
    }
}

fn gaps(positions: &[u64]) -> impl Iterator<Item = u64> + '_ {
    let mut next = 0u64;
    positions.iter().map(move |&p| {
        let gap = p - next;
        next = p + 1;
        gap
    })
}

/// Rice parameter near `log2` of the mean gap that gives the fewest bits, with that size.
fn best_rice(positions: &[u64], numel: u64) -> (u8, u64) {
    let m = positions.len() as u64;
    if m == 0 {
        return (0, 0);
    }
    let mean = (numel - m) / m;
    let guess = 63 - (mean.max(1)).leading_zeros() as i64;
    let mut best = (0u8, u64::MAX);
    for k in (guess - 2).max(0)..=(guess + 1).min(31) {
        let k = k as u32;
        let bits: u64 = gaps(positions).map(|g| (g >> k) + 1 + u64::from(k)).sum();
        if bits < best.1 {
            best = (k as u8, bits);
        }
    }
    best
}

fn elias_fano_low_bits(m: u64, numel: u64) -> u8 {
    if m == 0 || numel <= m {
        0
    } else {
        (63 - (numel / m).leading_zeros()).min(31) as u8
    }
}

fn elias_fano_bits(m: u64, numel: u64, l: u8) -> u64 {
    m * u64::from(l) + m + (numel >> l) + 1
}

/// Encodes strictly increasing positions below `numel` with the smaller of the two codings.
pub(crate) fn encode(positions: &[u64], numel: u64) -> (PositionCoding, Vec<u8>) {
    let m = positions.len() as u64;
    let (k, rice_bits) = best_rice(positions, numel);
    let l = elias_fano_low_bits(m, numel);
    let ef_bits = elias_fano_bits(m, numel, l);
    if rice_bits <= ef_bits {
        (PositionCoding::Rice, encode_rice(positions, k, rice_bits))
    } else {
        (
            PositionCoding::EliasFano,
            encode_elias_fano(positions, l, ef_bits),
        )
    }
}

/// Section sizes in bytes of both codings, for measurements.
#[cfg(test)]
pub(crate) fn sizes(positions: &[u64], numel: u64) -> (u64, u64) {
    let m = positions.len() as u64;
    let (_, rice_bits) = best_rice(positions, numel);
    let ef_bits = elias_fano_bits(m, numel, elias_fano_low_bits(m, numel));
    (1 + rice_bits.div_ceil(8), 1 + ef_bits.div_ceil(8))
}

fn encode_rice(positions: &[u64], k: u8, bits: u64) -> Vec<u8> {
    let mut w = BitWriter::new(bits);
    for gap in gaps(positions) {
        w.put_ones(gap >> k);
        w.put(0, 1);
        w.put(gap, u32::from(k));
    }
    let mut out = vec![k];
    out.extend(w.finish());
    out
}

fn encode_elias_fano(positions: &[u64], l: u8, bits: u64) -> Vec<u8> {
    let mut w = BitWriter::new(bits);
    for &p in positions {
        w.put(p, u32::from(l));
    }
    // The upper bits form a unary-coded sequence of bucket increments.
    let mut bucket = 0u64;
    for &p in positions {
        let high = p >> l;
        let mut zeros = high - bucket;
        while zeros >= 32 {
            w.put(0, 32);
            zeros -= 32;
        }
        w.put(0, zeros as u32);
        w.put(1, 1);
        bucket = high;
    }
    let written = positions.len() as u64 * u64::from(l) + positions.len() as u64 + bucket;
    let mut pad = bits - written;
    while pad >= 32 {
        w.put(0, 32);
        pad -= 32;
    }
    w.put(0, pad as u32);
    let mut out = vec![l];
    out.extend(w.finish());
    out
}

fn corrupt(what: &str) -> UltraDeltaError {
    UltraDeltaError::Corrupt(format!("positions section: {what}"))
}

/// Decodes `count` positions, checking that they are strictly increasing, below `numel`, and
/// that the section has no bytes left over.
pub(crate) fn decode(
    coding: PositionCoding,
    section: &[u8],
    count: u64,
    numel: u64,
) -> Result<Vec<u64>, UltraDeltaError> {
    let (&param, stream) = section
        .split_first()
        .ok_or_else(|| corrupt("empty section"))?;
    if param > 31 {
        return Err(corrupt("parameter above 31"));
    }
    // Every position costs at least one bit, so a count above the stream's bits is corrupt and
    // is rejected before allocating.
    if count > stream.len() as u64 * 8 || count > numel {
        return Err(corrupt(
            "more positions than the section or tensor can hold",
        ));
    }
    let mut reader = BitReader::new(stream);
    let mut positions = Vec::with_capacity(count as usize);
    match coding {
        PositionCoding::Rice => {
            let mut next = 0u64;
            for _ in 0..count {
                let high = reader
                    .get_unary(numel)
                    .ok_or_else(|| corrupt("truncated gap"))?;
                let low = reader
                    .get(u32::from(param))
                    .ok_or_else(|| corrupt("truncated gap"))?;
                let gap = high.checked_mul(1u64 << param).map(|h| h | low);
                let p = gap
                    .and_then(|g| next.checked_add(g))
                    .ok_or_else(|| corrupt("gap overflow"))?;
                if p >= numel {
                    return Err(corrupt("position beyond the tensor"));
                }
                positions.push(p);
                next = p + 1;
            }
            let used = reader.bit.div_ceil(8);
            if used != stream.len() as u64 {
                return Err(corrupt("trailing bytes after the last gap"));
            }
        }
        PositionCoding::EliasFano => {
            let l = param;
            let bits = elias_fano_bits(count, numel, l);
            if bits.div_ceil(8) != stream.len() as u64 {
                return Err(corrupt("length does not match the Elias-Fano layout"));
            }
            let mut lows = Vec::with_capacity(count as usize);
            for _ in 0..count {
                lows.push(
                    reader
                        .get(u32::from(l))
                        .ok_or_else(|| corrupt("truncated low bits"))?,
                );
            }
            let mut bucket = 0u64;
            for (i, &low) in lows.iter().enumerate() {
                loop {
                    match reader.get_bit() {
                        Some(true) => break,
                        Some(false) => bucket += 1,
                        None => return Err(corrupt("truncated upper bits")),
                    }
                }
                let p = (bucket << l) | low;
                if p >= numel || (i > 0 && positions.last().is_some_and(|&last| p <= last)) {
                    return Err(corrupt("positions not increasing within the tensor"));
                }
                positions.push(p);
            }
        }
    }
    Ok(positions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_positions(numel: u64, keep_every: u64) -> Vec<u64> {
        (0..numel)
            .filter(|i| (i * 2654435761) % keep_every == 0)
            .collect()
    }

    #[test]
    fn rice_and_elias_fano_round_trip() {
        for (numel, every) in [(1000u64, 3u64), (100_000, 33), (5, 1), (64, 64)] {
            let positions = sample_positions(numel, every);
            let m = positions.len() as u64;
            let (k, bits) = best_rice(&positions, numel);
            let rice = encode_rice(&positions, k, bits);
            assert_eq!(
                decode(PositionCoding::Rice, &rice, m, numel).unwrap(),
                positions
            );
            let l = elias_fano_low_bits(m, numel);
            let ef = encode_elias_fano(&positions, l, elias_fano_bits(m, numel, l));
            assert_eq!(
                ef.len() as u64,
                1 + elias_fano_bits(m, numel, l).div_ceil(8)
            );
            assert_eq!(
                decode(PositionCoding::EliasFano, &ef, m, numel).unwrap(),
                positions
            );
        }
    }

    #[test]
    fn empty_position_list_round_trips() {
        let (coding, bytes) = encode(&[], 100);
        assert_eq!(decode(coding, &bytes, 0, 100).unwrap(), Vec::<u64>::new());
    }

    #[test]
    fn position_beyond_tensor_is_rejected() {
        let (coding, bytes) = encode(&[3, 90], 100);
        assert!(decode(coding, &bytes, 2, 50).is_err());
    }
}
