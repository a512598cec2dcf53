//! The external write-intent bitmap area: pure helpers over its bytes.
//!
//! md's bit order (kernel-md-external.md section 2): chunk `n` is bit
//! `n % 8` of byte `n / 8`, starting at `bitmap/location`. There is no
//! header. md loads whatever bits are set at activation as dirty, and never
//! clears bits beyond the last chunk, so those must always be zero.

use crate::units::Bytes;

/// Whether chunk `n`'s bit is set (false beyond the buffer).
pub fn is_set(bits: &[u8], n: u64) -> bool {
    usize::try_from(n / 8)
        .ok()
        .and_then(|i| bits.get(i))
        .is_some_and(|b| b & (1 << (n % 8)) != 0)
}

/// The initial bitmap area of `size` bytes for `chunks` chunks: every
/// chunk bit set when `dirty` (the first assembly resyncs them), or all
/// zero (`--assume-clean`). Bits from `chunks` on are always zero. If the
/// area is too small for `chunks`, only the bits that fit are set.
pub fn initial(chunks: u64, size: Bytes, dirty: bool) -> Vec<u8> {
    let len = usize::try_from(size.0).unwrap_or(usize::MAX);
    let mut v = vec![0u8; len];
    if dirty {
        let chunks = chunks.min(size.0.saturating_mul(8));
        // Both bounded by `len` since chunks <= 8 * len.
        let full = (chunks / 8) as usize;
        v[..full].fill(0xff);
        let rem = chunks % 8;
        if rem != 0 {
            v[full] = (1u8 << rem) - 1;
        }
    }
    v
}

/// The set chunk numbers below `chunks`, ascending (bits at or beyond
/// `chunks` are ignored).
pub fn dirty_chunks(bits: &[u8], chunks: u64) -> Vec<u64> {
    let mut out = Vec::new();
    for (i, &b) in bits.iter().enumerate() {
        if b == 0 {
            continue;
        }
        for bit in 0..8u64 {
            let n = i as u64 * 8 + bit;
            if n >= chunks {
                return out;
            }
            if b & (1 << bit) != 0 {
                out.push(n);
            }
        }
    }
    out
}

/// The set chunks below `chunks` as inclusive ranges `(first, last)`,
/// ascending and maximal (adjacent chunks merge).
pub fn dirty_ranges(bits: &[u8], chunks: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for n in dirty_chunks(bits, chunks) {
        match out.last_mut() {
            Some((_, last)) if *last + 1 == n => *last = n,
            _ => out.push((n, n)),
        }
    }
    out
}

/// Number of set chunks below `chunks`.
pub fn count_dirty(bits: &[u8], chunks: u64) -> u64 {
    let full = usize::try_from(chunks / 8)
        .unwrap_or(usize::MAX)
        .min(bits.len());
    let mut n: u64 = bits[..full].iter().map(|b| u64::from(b.count_ones())).sum();
    let rem = chunks % 8;
    if rem != 0 {
        if let Some(b) = bits.get(full) {
            n += u64::from((b & ((1u8 << rem) - 1)).count_ones());
        }
    }
    n
}

/// Whether any bit at or beyond `chunks` is set (md would never clear it).
pub fn has_stray_bits(bits: &[u8], chunks: u64) -> bool {
    let total = bits.iter().map(|b| u64::from(b.count_ones())).sum::<u64>();
    total != count_dirty(bits, chunks)
}

/// The longest value written to md's `bitmap_set_bits` in one `write(2)`.
///
/// md's sysfs store sees at most one page of a write: kernfs copies
/// `min(len, PAGE_SIZE)` bytes, NUL-terminates them and reports that many
/// written. A longer list is applied up to the page end with its last token
/// cut (a chunk number with digits missing is another chunk), and the rest
/// never arrives. 4095 is below the smallest page size md runs with.
pub const SET_BITS_MAX_WRITE: usize = 4095;

/// One `bitmap_set_bits` token: `N` or `N-M` (inclusive).
fn set_bits_token(a: u64, b: u64) -> String {
    if a == b {
        a.to_string()
    } else {
        format!("{a}-{b}")
    }
}

/// Ranges in the syntax md's `bitmap_set_bits` takes: space-separated
/// `N` or `N-M` (inclusive). Longer than a page for big lists: write it
/// with [`set_bits_pieces`].
pub fn ranges_to_set_bits(ranges: &[(u64, u64)]) -> String {
    ranges
        .iter()
        .map(|&(a, b)| set_bits_token(a, b))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The list of [`ranges_to_set_bits`] cut into values of at most `max`
/// bytes, each a whole list of its own: pieces break between tokens (never
/// inside one), carry no leading or trailing space, and together name
/// exactly `ranges`. Each piece is meant for one `write(2)` (use
/// [`SET_BITS_MAX_WRITE`] for `max`). A piece is longer than `max` only if
/// a single token is (`max` below 41 bytes, the longest `N-M` of u64s).
pub fn set_bits_pieces(ranges: &[(u64, u64)], max: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for &(a, b) in ranges {
        let tok = set_bits_token(a, b);
        if !cur.is_empty() && cur.len() + 1 + tok.len() > max {
            out.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(&tok);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Parse a `bitmap_set_bits` value back into ranges, as md does but
/// strictly: `None` if any token is not `N` or `N-M` with `N <= M`.
pub fn parse_set_bits(s: &str) -> Option<Vec<(u64, u64)>> {
    s.split(' ')
        .map(|t| {
            let (a, b) = match t.split_once('-') {
                Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
                None => {
                    let n = t.parse().ok()?;
                    (n, n)
                }
            };
            (a <= b).then_some((a, b))
        })
        .collect()
}

/// The first of `chunks` (ascending or not) whose bit is not set in
/// `bits`: what a check of md's flushed bitmap reports as missing.
pub fn first_missing(bits: &[u8], ranges: &[(u64, u64)]) -> Option<u64> {
    ranges
        .iter()
        .find_map(|&(a, b)| (a..=b).find(|&n| !is_set(bits, n)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_dirty_sets_exactly_the_chunks() {
        let v = initial(13, Bytes(4096), true);
        assert_eq!(v.len(), 4096);
        assert_eq!(v[0], 0xff);
        assert_eq!(v[1], 0b0001_1111);
        assert!(v[2..].iter().all(|&b| b == 0));
        assert_eq!(count_dirty(&v, 13), 13);
        assert!(!has_stray_bits(&v, 13));
        let v = initial(16, Bytes(4096), true);
        assert_eq!(&v[..3], &[0xff, 0xff, 0]);
        let v = initial(13, Bytes(4096), false);
        assert!(v.iter().all(|&b| b == 0));
        // Too small: clamp, never panic.
        let v = initial(100_000, Bytes(4), true);
        assert_eq!(v, vec![0xff; 4]);
    }

    #[test]
    fn bit_order_matches_md() {
        // kernel notes: chunk 10 -> 0x04 in byte 1; chunks 171,172 -> 0x18 in byte 21.
        let mut v = vec![0u8; 32];
        v[1] = 0x04;
        v[21] = 0x18;
        assert_eq!(dirty_chunks(&v, 256), vec![10, 171, 172]);
        assert_eq!(dirty_ranges(&v, 256), vec![(10, 10), (171, 172)]);
        assert!(is_set(&v, 10) && !is_set(&v, 11) && !is_set(&v, 10_000));
        assert_eq!(ranges_to_set_bits(&dirty_ranges(&v, 256)), "10 171-172");
    }

    /// Every piece is under a page, a whole list of its own (no cut
    /// token, no stray space), and the pieces name exactly the input.
    fn check_pieces(ranges: &[(u64, u64)], max: usize) -> Vec<String> {
        let pieces = set_bits_pieces(ranges, max);
        let mut back = Vec::new();
        for p in &pieces {
            // Longer only when one token alone is.
            assert!(
                p.len() <= max || !p.contains(' '),
                "piece of {} bytes > {max}",
                p.len()
            );
            assert!(!p.is_empty() && !p.starts_with(' ') && !p.ends_with(' '));
            back.extend(parse_set_bits(p).unwrap_or_else(|| panic!("piece does not parse: {p}")));
        }
        assert_eq!(back, ranges, "the pieces' union differs from the input");
        // Nothing was split off that would still have fit: each piece but
        // the last is full up to the next token.
        for w in pieces.windows(2) {
            let next = w[1].split(' ').next().unwrap_or_default();
            assert!(w[0].len() + 1 + next.len() > max);
        }
        pieces
    }

    #[test]
    fn set_bits_pieces_split_at_tokens_under_a_page() {
        // The observed failure: ~2300 scattered chunks, one write.
        let scattered: Vec<(u64, u64)> = (0..20_000u64).map(|k| (2 * k, 2 * k)).collect();
        let whole = ranges_to_set_bits(&scattered);
        assert!(whole.len() > 100_000);
        let pieces = check_pieces(&scattered, SET_BITS_MAX_WRITE);
        assert!(pieces.iter().all(|p| p.len() < 4096));
        assert!(pieces.len() >= whole.len().div_ceil(SET_BITS_MAX_WRITE));
        assert!(pieces.len() <= whole.len().div_ceil(SET_BITS_MAX_WRITE - 6));
        assert_eq!(pieces.join(" "), whole);
        // Ranges, big numbers, a tiny limit (one token per piece).
        let mixed = [
            (0, 0),
            (5, 9),
            (1 << 40, (1 << 40) + 7),
            (u64::MAX - 1, u64::MAX),
        ];
        check_pieces(&mixed, SET_BITS_MAX_WRITE);
        assert_eq!(check_pieces(&mixed, 1).len(), 4);
        assert_eq!(check_pieces(&[(1, 1), (3, 3), (5, 5)], 3), vec!["1 3", "5"]);
        assert!(set_bits_pieces(&[], SET_BITS_MAX_WRITE).is_empty());
        // A list that fits stays one write, identical to the old format.
        let small = [(2, 2), (50, 51), (150, 150)];
        assert_eq!(
            set_bits_pieces(&small, SET_BITS_MAX_WRITE),
            vec!["2 50-51 150"]
        );
    }

    #[test]
    fn set_bits_pieces_random_lists() {
        use proptest::prelude::*;
        let mut runner = proptest::test_runner::TestRunner::default();
        let strat = (
            proptest::collection::vec((0u64..5000, 0u64..40), 0..3000),
            1usize..5000,
        );
        runner
            .run(&strat, |(steps, max)| {
                // Ascending disjoint ranges from (gap, length) steps.
                let mut next = 0u64;
                let ranges: Vec<(u64, u64)> = steps
                    .iter()
                    .map(|&(gap, len)| {
                        let a = next + gap;
                        next = a + len + 2;
                        (a, a + len)
                    })
                    .collect();
                let max = max.max(41);
                check_pieces(&ranges, max);
                prop_assert!(set_bits_pieces(&ranges, max).iter().all(|p| p.len() <= max));
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn first_missing_names_the_lowest_unset_chunk() {
        let mut v = vec![0u8; 8];
        for n in [2u64, 3, 9, 40] {
            v[(n / 8) as usize] |= 1 << (n % 8);
        }
        assert_eq!(first_missing(&v, &[(2, 3), (9, 9), (40, 40)]), None);
        assert_eq!(first_missing(&v, &[(2, 4), (9, 9)]), Some(4));
        assert_eq!(first_missing(&v, &[(9, 9), (1000, 1000)]), Some(1000));
        assert_eq!(parse_set_bits("1 2-3"), Some(vec![(1, 1), (2, 3)]));
        assert_eq!(parse_set_bits("1 3-2"), None);
        assert_eq!(parse_set_bits("1  2"), None);
        assert_eq!(parse_set_bits("12,"), None);
    }

    #[test]
    fn masked_beyond_chunks() {
        let v = vec![0xffu8; 4];
        assert_eq!(dirty_chunks(&v, 5), vec![0, 1, 2, 3, 4]);
        assert_eq!(dirty_ranges(&v, 5), vec![(0, 4)]);
        assert_eq!(count_dirty(&v, 5), 5);
        assert_eq!(count_dirty(&v, 100), 32);
        assert!(has_stray_bits(&v, 5));
        assert_eq!(
            dirty_ranges(&[0b1010_0101], 8),
            vec![(0, 0), (2, 2), (5, 5), (7, 7)]
        );
        assert_eq!(count_dirty(&[], 10), 0);
    }
}

/// A compact picture of where the dirty chunks are: at most `rows` lines of
/// `width` cells, each cell covering an equal run of chunks and drawn as
/// `.` (all clean), `+` (some dirty) or `#` (all dirty).
pub fn grid(bits: &[u8], chunks: u64, width: usize, rows: usize) -> Vec<String> {
    if chunks == 0 || width == 0 || rows == 0 {
        return Vec::new();
    }
    let cells = (width * rows) as u64;
    let per = chunks.div_ceil(cells).max(1);
    let ncells = chunks.div_ceil(per);
    let mut line = String::new();
    let mut out = Vec::new();
    for c in 0..ncells {
        let first = c * per;
        let last = (first + per).min(chunks);
        let dirty = (first..last).filter(|&n| is_set(bits, n)).count() as u64;
        line.push(if dirty == 0 {
            '.'
        } else if dirty == last - first {
            '#'
        } else {
            '+'
        });
        if line.len() == width {
            out.push(std::mem::take(&mut line));
        }
    }
    if !line.is_empty() {
        out.push(line);
    }
    out
}

/// Chunks per grid cell for [`grid`].
pub fn grid_cell_chunks(chunks: u64, width: usize, rows: usize) -> u64 {
    chunks.div_ceil((width * rows).max(1) as u64).max(1)
}

#[cfg(test)]
mod grid_tests {
    use super::*;

    #[test]
    fn grid_draws_dirty_runs() {
        let mut bits = vec![0u8; 16];
        for n in [0u64, 1, 2, 3, 64] {
            bits[(n / 8) as usize] |= 1 << (n % 8);
        }
        // 128 chunks on 8 cells of 16: cell 0 partly dirty, cell 4 partly.
        let g = grid(&bits, 128, 8, 1);
        assert_eq!(g, vec!["+...+...".to_string()]);
        // One chunk per cell.
        let g = grid(&bits, 8, 4, 4);
        assert_eq!(g, vec!["####".to_string(), "....".to_string()]);
        assert_eq!(grid_cell_chunks(128, 8, 1), 16);
        assert!(grid(&bits, 0, 8, 1).is_empty());
    }
}
