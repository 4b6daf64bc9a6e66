//! Content-defined chunking (FastCDC 2020 with a secret gear table) and the blob encoding
//! (optional byte shuffle, zstd).

use std::borrow::Cow;
use std::io::Read;

use fastcdc::v2020::{cut_gear, select_masks, Normalization};

/// Chunk size bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkParams {
    pub min: usize,
    pub avg: usize,
    pub max: usize,
}

/// File data: 32 KiB / 128 KiB / 512 KiB (small enough that an edit re-stores little, large enough that the
/// index stays small: about 8,000 entries per GB).
pub const DATA_CHUNKS: ChunkParams = ChunkParams {
    min: 32 * 1024,
    avg: 128 * 1024,
    max: 512 * 1024,
};

/// Snapshot item streams (metadata): 2 KiB / 8 KiB / 32 KiB, so a few changed files re-store only the few
/// kilobytes of metadata around them.
pub const TREE_CHUNKS: ChunkParams = ChunkParams {
    min: 2 * 1024,
    avg: 8 * 1024,
    max: 32 * 1024,
};

/// A chunker with its (secret) gear tables.
pub struct Chunker {
    params: ChunkParams,
    masks: (u64, u64),
    gear: Cow<'static, [u64]>,
    gear_ls: Cow<'static, [u64]>,
}

impl Chunker {
    /// A chunker with the gear table of `key` (see [`crate::backup::crypto::MasterKey::gear`]).
    pub fn new(params: ChunkParams, key: &crate::backup::crypto::MasterKey) -> Self {
        let (gear, gear_ls) = key.gear();
        Chunker {
            params,
            masks: select_masks(params.avg, Normalization::Level1),
            gear: Cow::Owned(gear),
            gear_ls: Cow::Owned(gear_ls),
        }
    }

    /// A chunker with FastCDC's public gear table XORed with `seed` (tests and benchmarks).
    pub fn with_seed(params: ChunkParams, seed: u64) -> Self {
        let (gear, gear_ls) = fastcdc::v2020::get_gear_with_seed(seed);
        Chunker {
            params,
            masks: select_masks(params.avg, Normalization::Level1),
            gear,
            gear_ls,
        }
    }

    pub fn params(&self) -> ChunkParams {
        self.params
    }

    /// Length of the first chunk of `data`; `data` must hold at least `max` bytes unless it is the end of the
    /// stream.
    pub fn cut(&self, data: &[u8]) -> usize {
        if data.len() <= self.params.min {
            return data.len();
        }
        let (ms, ml) = self.masks;
        let (_, n) = cut_gear(
            data,
            self.params.min,
            self.params.avg,
            self.params.max,
            ms,
            ml,
            ms << 1,
            ml << 1,
            &self.gear,
            &self.gear_ls,
        );
        n.clamp(1, data.len())
    }

    /// Splits a whole in-memory buffer.
    pub fn split<'a>(&self, data: &'a [u8]) -> Vec<&'a [u8]> {
        let mut out = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            let n = self.cut(rest);
            out.push(&rest[..n]);
            rest = &rest[n..];
        }
        out
    }

    /// Streams `reader` through the chunker, calling `f(offset, chunk)` for each chunk (in order). Holds a
    /// buffer of `max(4 * max, 8 MiB)` bytes. `f` returns false to stop early.
    pub fn stream<R: Read>(
        &self,
        mut reader: R,
        buf: &mut Vec<u8>,
        mut f: impl FnMut(u64, Vec<u8>) -> bool,
    ) -> std::io::Result<()> {
        let max = self.params.max;
        let cap = (4 * max).max(8 << 20);
        if buf.len() < cap {
            buf.resize(cap, 0); // once per reader: the buffer is reused across files
        }
        let cap = buf.len();
        let (mut start, mut end) = (0usize, 0usize);
        let mut offset = 0u64;
        let mut eof = false;
        loop {
            if !eof && end - start < max {
                // compact (moves less than `max` bytes once per `cap - max` bytes consumed), then fill
                buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
                while !eof && end < cap {
                    match reader.read(&mut buf[end..]) {
                        Ok(0) => eof = true,
                        Ok(n) => end += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            if start == end {
                return Ok(());
            }
            let n = self.cut(&buf[start..end]);
            let chunk = buf[start..start + n].to_vec();
            start += n;
            if !f(offset, chunk) {
                return Ok(());
            }
            offset += n as u64;
        }
    }
}

/// How a blob's plaintext was transformed before zstd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// zstd only.
    None,
    /// Byte shuffle of `elem`-byte elements starting `phase` bytes into the file's element grid: byte k of
    /// every element is stored together (all first bytes, then all second bytes...), which turns smooth
    /// float arrays into long runs zstd compresses well.
    Shuffle { elem: u8, phase: u8 },
}

/// Encoding tags (first byte of a blob's plaintext payload inside its sealed envelope).
const ENC_RAW: u8 = 0;
const ENC_ZSTD: u8 = 1;
const ENC_ZSTD_SHUFFLE: u8 = 2;

/// Transposes an 8x8 byte matrix held in 8 little-endian u64 rows.
#[inline(always)]
fn transpose8(r: &mut [u64; 8]) {
    // three rounds of block swaps: 4x4 blocks of bytes, 2x2, 1x1
    for (j, m, s) in [
        (4usize, 0x0000_0000_ffff_ffffu64, 32u32),
        (2, 0x0000_ffff_0000_ffff, 16),
        (1, 0x00ff_00ff_00ff_00ff, 8),
    ] {
        let mut k = 0;
        while k < 8 {
            for i in k..k + j {
                let a = r[i];
                let b = r[i + j];
                r[i] = (a & m) | ((b & m) << s);
                r[i + j] = ((a >> s) & m) | (b & !m);
            }
            k += 2 * j;
        }
    }
}

/// Byte lanes of 8-byte elements: `dst[k*n + i] = src[i*8 + k]` for `n = src.len() / 8`.
fn shuffle8(src: &[u8], dst: &mut [u8]) {
    let n = src.len() / 8;
    let blocks = n / 8;
    for bi in 0..blocks {
        let mut r = [0u64; 8];
        for (j, v) in r.iter_mut().enumerate() {
            let o = (bi * 8 + j) * 8;
            *v = u64::from_le_bytes(src[o..o + 8].try_into().unwrap());
        }
        transpose8(&mut r);
        for (k, v) in r.iter().enumerate() {
            let o = k * n + bi * 8;
            dst[o..o + 8].copy_from_slice(&v.to_le_bytes());
        }
    }
    for i in blocks * 8..n {
        for k in 0..8 {
            dst[k * n + i] = src[i * 8 + k];
        }
    }
}

/// Inverse of [`shuffle8`], appended to `dst` (written once: no zero-filled buffer first).
fn unshuffle8(src: &[u8], dst: &mut Vec<u8>) {
    let n = src.len() / 8;
    let blocks = n / 8;
    dst.reserve(n * 8);
    for bi in 0..blocks {
        let mut r = [0u64; 8];
        for (k, v) in r.iter_mut().enumerate() {
            let o = k * n + bi * 8;
            *v = u64::from_le_bytes(src[o..o + 8].try_into().unwrap());
        }
        transpose8(&mut r);
        let mut block = [0u8; 64];
        for (j, v) in r.iter().enumerate() {
            block[j * 8..j * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        dst.extend_from_slice(&block);
    }
    for i in blocks * 8..n {
        dst.extend((0..8).map(|k| src[k * n + i]));
    }
}

/// Shuffles `data[head..head + n*elem]` into `out` (the head and the tail stay in place).
fn shuffle(data: &[u8], elem: usize, head: usize, out: &mut Vec<u8>) {
    out.clear();
    out.reserve(data.len());
    let head = head.min(data.len());
    let n = (data.len() - head) / elem;
    out.extend_from_slice(&data[..head]);
    let body = &data[head..head + n * elem];
    let start = out.len();
    out.resize(start + n * elem, 0);
    let dst = &mut out[start..];
    if elem == 8 {
        shuffle8(body, dst);
    } else {
        for k in 0..elem {
            let lane = &mut dst[k * n..(k + 1) * n];
            for (i, d) in lane.iter_mut().enumerate() {
                *d = body[i * elem + k];
            }
        }
    }
    out.extend_from_slice(&data[head + n * elem..]);
}

fn unshuffle(data: &[u8], elem: usize, head: usize, out: &mut Vec<u8>) {
    out.clear();
    out.reserve(data.len());
    let head = head.min(data.len());
    let n = (data.len() - head) / elem;
    out.extend_from_slice(&data[..head]);
    let body = &data[head..head + n * elem];
    if elem == 8 {
        unshuffle8(body, out);
    } else {
        let start = out.len();
        out.resize(start + n * elem, 0);
        let dst = &mut out[start..];
        for k in 0..elem {
            let lane = &body[k * n..(k + 1) * n];
            for (i, s) in lane.iter().enumerate() {
                dst[i * elem + k] = *s;
            }
        }
    }
    out.extend_from_slice(&data[head + n * elem..]);
}

/// Bytes to skip so that the shuffled body starts on an element boundary, for a chunk at file `offset` of a
/// file whose element grid starts at `phase`.
fn head_len(offset: u64, elem: u8, phase: u8) -> usize {
    let e = elem as u64;
    ((phase as u64 + e - offset % e) % e) as usize
}

/// A per-thread encoder (reuses its zstd context and buffers).
pub struct Encoder {
    cctx: zstd::bulk::Compressor<'static>,
    tmp: Vec<u8>,
    z: Vec<u8>,
}

impl Encoder {
    pub fn new(level: i32) -> Self {
        Encoder {
            cctx: zstd::bulk::Compressor::new(level).expect("zstd level in range"),
            tmp: Vec::new(),
            z: Vec::new(),
        }
    }

    /// Encodes a chunk at file `offset`: returns the payload as (header bytes, body) without copying the body
    /// (it lives in this encoder or is `data` itself).
    pub fn encode_parts<'a>(
        &'a mut self,
        data: &'a [u8],
        offset: u64,
        filter: Filter,
    ) -> (smallvec_hdr::Hdr, &'a [u8]) {
        let (hdr, src): (smallvec_hdr::Hdr, &[u8]) = match filter {
            Filter::Shuffle { elem, phase } if data.len() >= 4 * elem as usize => {
                let head = head_len(offset, elem, phase);
                shuffle(data, elem as usize, head, &mut self.tmp);
                (
                    smallvec_hdr::Hdr::new(&[ENC_ZSTD_SHUFFLE, elem, head as u8]),
                    &self.tmp,
                )
            }
            _ => (smallvec_hdr::Hdr::new(&[ENC_ZSTD]), data),
        };
        let bound = zstd::zstd_safe::compress_bound(src.len());
        if self.z.capacity() < bound {
            self.z.reserve(bound - self.z.len());
        }
        match self.cctx.compress_to_buffer(src, &mut self.z) {
            Ok(n) if n + hdr.len() < data.len() + 1 => (hdr, &self.z[..n]),
            _ => (smallvec_hdr::Hdr::new(&[ENC_RAW]), data), // incompressible: stored raw
        }
    }

    /// Encodes a chunk into `out` (cleared first): tag byte, filter bytes, payload.
    pub fn encode(&mut self, data: &[u8], offset: u64, filter: Filter, out: &mut Vec<u8>) {
        let (hdr, body) = self.encode_parts(data, offset, filter);
        out.clear();
        out.extend_from_slice(hdr.as_slice());
        out.extend_from_slice(body);
    }

    /// Compressed size of `data` under `filter` (for choosing a file's filter on a sample).
    pub fn trial_size(&mut self, data: &[u8], filter: Filter) -> usize {
        let (hdr, body) = self.encode_parts(data, 0, filter);
        hdr.len() + body.len()
    }
}

/// The (at most 3-byte) payload header, kept on the stack.
pub mod smallvec_hdr {
    #[derive(Clone, Copy)]
    pub struct Hdr {
        b: [u8; 3],
        n: u8,
    }
    impl Hdr {
        pub fn new(s: &[u8]) -> Self {
            let mut b = [0u8; 3];
            b[..s.len()].copy_from_slice(s);
            Hdr {
                b,
                n: s.len() as u8,
            }
        }
        pub fn as_slice(&self) -> &[u8] {
            &self.b[..self.n as usize]
        }
        #[allow(clippy::len_without_is_empty)]
        pub fn len(&self) -> usize {
            self.n as usize
        }
    }
}

/// Decodes a blob payload (output of [`Encoder::encode`]) of plaintext length `raw_len`.
pub fn decode(
    payload: &[u8],
    raw_len: usize,
    dctx: &mut zstd::bulk::Decompressor<'static>,
) -> Result<Vec<u8>, String> {
    let (&tag, rest) = payload.split_first().ok_or("empty payload")?;
    match tag {
        ENC_RAW => Ok(rest.to_vec()),
        ENC_ZSTD => decompress(dctx, rest, raw_len),
        ENC_ZSTD_SHUFFLE => {
            if rest.len() < 2 {
                return Err("truncated filter header".into());
            }
            let (elem, head) = (rest[0] as usize, rest[1] as usize);
            if !(elem == 2 || elem == 4 || elem == 8) || head >= elem {
                return Err(format!("bad shuffle parameters {elem}/{head}"));
            }
            let shuffled = decompress(dctx, &rest[2..], raw_len)?;
            let mut out = Vec::new();
            unshuffle(&shuffled, elem, head, &mut out);
            Ok(out)
        }
        t => Err(format!("unknown encoding {t}")),
    }
}

fn decompress(
    dctx: &mut zstd::bulk::Decompressor<'static>,
    src: &[u8],
    raw_len: usize,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(raw_len);
    dctx.decompress_to_buffer(src, &mut out)
        .map_err(|e| format!("zstd: {e}"))?;
    if out.len() != raw_len {
        return Err(format!(
            "decompressed to {} bytes, expected {raw_len}",
            out.len()
        ));
    }
    Ok(out)
}

/// Parses an `.npy` header: (element size, data offset) for little-endian numeric dtypes.
pub fn npy_layout(head: &[u8]) -> Option<(u8, usize)> {
    if head.len() < 10 || &head[..6] != b"\x93NUMPY" {
        return None;
    }
    let (hlen, start) = match head[6] {
        1 => (u16::from_le_bytes([head[8], head[9]]) as usize, 10),
        2 | 3 if head.len() >= 12 => (
            u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize,
            12,
        ),
        _ => return None,
    };
    let text = std::str::from_utf8(head.get(start..start + hlen)?).ok()?;
    let d = text.find("'descr'")?;
    let rest = &text[d + 7..];
    let q1 = rest.find('\'')?;
    let rest = &rest[q1 + 1..];
    let q2 = rest.find('\'')?;
    let descr = &rest[..q2];
    let elem = match descr {
        "<f8" | "<i8" | "<u8" | "<c8" => 8,
        "<f4" | "<i4" | "<u4" => 4,
        "<f2" | "<i2" | "<u2" => 2,
        _ => return None,
    };
    Some((elem, start + hlen))
}

/// Chooses the filter for a file from its first bytes (`sample`, from offset 0): `.npy` headers give the
/// element size and grid; other data is tried with 8- and 4-byte shuffles and keeps the best if it is at
/// least 5% smaller than plain zstd.
pub fn choose_filter(sample: &[u8], enc: &mut Encoder) -> Filter {
    if let Some((elem, off)) = npy_layout(sample) {
        let phase = (off % elem as usize) as u8;
        let body = &sample[off.min(sample.len())..];
        let body = &body[..body.len().min(64 * 1024)];
        if body.len() >= 4096 {
            let plain = enc.trial_size(body, Filter::None);
            let sh = enc.trial_size(body, Filter::Shuffle { elem, phase: 0 });
            if sh * 100 < plain * 97 {
                return Filter::Shuffle { elem, phase };
            }
        }
        return Filter::None;
    }
    if sample.len() < 256 * 1024 {
        // small files (text, configs) are never worth the trial compressions
        return Filter::None;
    }
    let body = &sample[..sample.len().min(64 * 1024)];
    let plain = enc.trial_size(body, Filter::None);
    let mut best = (plain, Filter::None);
    for elem in [8u8, 4] {
        let f = Filter::Shuffle { elem, phase: 0 };
        let s = enc.trial_size(body, f);
        if s < best.0 {
            best = (s, f);
        }
    }
    if best.0 * 100 < plain * 95 {
        best.1
    } else {
        Filter::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand_bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn stream_equals_split_and_respects_bounds() {
        let c = Chunker::with_seed(DATA_CHUNKS, 42);
        let data = rand_bytes(5 * 1024 * 1024 + 123, 7);
        let split: Vec<Vec<u8>> = c.split(&data).into_iter().map(|s| s.to_vec()).collect();
        let mut streamed = Vec::new();
        // a reader returning short reads
        struct Short<'a>(&'a [u8]);
        impl Read for Short<'_> {
            fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
                let n = b.len().min(self.0.len()).min(70_001);
                b[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        c.stream(Short(&data), &mut Vec::new(), |_, ch| {
            streamed.push(ch);
            true
        })
        .unwrap();
        assert_eq!(split, streamed);
        assert_eq!(split.concat(), data);
        for ch in &split[..split.len() - 1] {
            assert!(ch.len() >= DATA_CHUNKS.min && ch.len() <= DATA_CHUNKS.max);
        }
    }

    #[test]
    fn insertion_changes_few_chunks() {
        let c = Chunker::with_seed(DATA_CHUNKS, 1);
        let data = rand_bytes(8 * 1024 * 1024, 3);
        let mut changed = rand_bytes(1000, 9);
        changed.extend_from_slice(&data);
        let a: std::collections::HashSet<&[u8]> = c.split(&data).into_iter().collect();
        let b = c.split(&changed);
        let new: usize = b.iter().filter(|x| !a.contains(*x)).map(|x| x.len()).sum();
        assert!(new <= 2 * DATA_CHUNKS.max, "{new} new bytes");
    }

    #[test]
    fn encode_decode_all_filters_and_offsets() {
        let mut enc = Encoder::new(3);
        let mut d = zstd::bulk::Decompressor::new().unwrap();
        let smooth: Vec<u8> = (0..40_000)
            .flat_map(|i| (i as f64 * 1e-3).sin().to_le_bytes())
            .collect();
        for data in [smooth.clone(), rand_bytes(10_000, 5), vec![], vec![1, 2, 3]] {
            for f in [
                Filter::None,
                Filter::Shuffle { elem: 8, phase: 0 },
                Filter::Shuffle { elem: 8, phase: 5 },
                Filter::Shuffle { elem: 4, phase: 3 },
            ] {
                for off in [0u64, 1, 7, 128, 1_000_003] {
                    let mut out = Vec::new();
                    enc.encode(&data, off, f, &mut out);
                    assert_eq!(decode(&out, data.len(), &mut d).unwrap(), data);
                }
            }
        }
        let mut a = Vec::new();
        let mut b = Vec::new();
        enc.encode(&smooth, 0, Filter::None, &mut a);
        enc.encode(&smooth, 0, Filter::Shuffle { elem: 8, phase: 0 }, &mut b);
        assert!(
            b.len() < a.len(),
            "shuffle {} vs plain {}",
            b.len(),
            a.len()
        );
        assert!(decode(&[9, 1], 1, &mut d).is_err());
        assert!(decode(&a[..a.len() / 2], smooth.len(), &mut d).is_err());
    }

    #[test]
    fn shuffle8_matches_the_scalar_definition() {
        for n in [0usize, 1, 7, 8, 9, 63, 64, 65, 1000] {
            let src = rand_bytes(n * 8, n as u64 + 1);
            let mut dst = vec![0u8; n * 8];
            shuffle8(&src, &mut dst);
            for i in 0..n {
                for k in 0..8 {
                    assert_eq!(dst[k * n + i], src[i * 8 + k]);
                }
            }
            let mut back = Vec::new();
            unshuffle8(&dst, &mut back);
            assert_eq!(back, src);
        }
    }

    #[test]
    fn npy_header_and_filter_choice() {
        let mut f = b"\x93NUMPY\x01\x00".to_vec();
        let h = "{'descr': '<f8', 'fortran_order': False, 'shape': (1000,), }";
        let mut h = h.to_string();
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        f.extend_from_slice(&(h.len() as u16).to_le_bytes());
        f.extend_from_slice(h.as_bytes());
        assert_eq!(npy_layout(&f), Some((8, 10 + h.len())));
        assert_eq!((10 + h.len()) % 64, 0);
        for i in 0..20_000 {
            f.extend_from_slice(&((i as f64) * 1e-3).sin().to_le_bytes());
        }
        let mut enc = Encoder::new(3);
        assert_eq!(
            choose_filter(&f, &mut enc),
            Filter::Shuffle { elem: 8, phase: 0 }
        );
        assert_eq!(
            choose_filter(&rand_bytes(70_000, 2), &mut enc),
            Filter::None
        );
    }
}
