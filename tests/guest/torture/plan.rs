//! What one torture run does, derived from its seed alone (the same on the
//! host, which prints it, and in the guest, which runs it).

/// SplitMix64: a small, well-mixed generator; the whole run follows from
/// the seed through it.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    /// One of `items`, each with its weight.
    pub fn weighted<T: Copy>(&mut self, items: &[(u32, T)]) -> T {
        let total: u64 = items.iter().map(|(w, _)| u64::from(*w)).sum();
        let mut x = self.next() % total;
        for (w, t) in items {
            if x < u64::from(*w) {
                return *t;
            }
            x -= u64::from(*w);
        }
        items[items.len() - 1].1
    }
}

/// The SplitMix64 finaliser.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed of run `i` of the campaign with base seed `base`.
pub fn run_seed(base: u64, i: u64) -> u64 {
    mix(base.wrapping_mul(0x1000_0000_01B3) ^ mix(i.wrapping_add(1)))
}

/// Which superblock copy a corruption hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corruption {
    /// Random bytes in the newest copy.
    Newest,
    /// Random bytes in the older copy.
    Oldest,
    /// Both copies: the member is no longer recognisable.
    Both,
    /// The newest copy's second half zeroed (a torn write).
    TornNewest,
}

/// The fault a run injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// A power cut after `at` acknowledged writes.
    Crash,
    /// A power cut inside the daemon at a metadata moment: before/half-way
    /// through/after its `nth` superblock write, or between recording the
    /// array whole and `can_clear=true`.
    CrashMeta { point: &'static str, nth: u32 },
    /// SIGKILL of mdextmon after `at` writes, then a restart.
    Kill,
    /// mdextmon dies at a metadata moment, then a restart.
    KillMeta { point: &'static str, nth: u32 },
    /// The victim's writes fail (dm-flakey `error_writes`); it comes back
    /// and is re-added.
    WriteErrors,
    /// The victim vanishes (every I/O fails: dm `error`); it comes back.
    Vanish,
    /// Metadata bytes on the victim corrupted while the array is stopped.
    Corrupt(Corruption),
    /// The victim swapped for a blank disk (after a power cut or a stop).
    Blank { crash: bool },
    /// The victim swapped for a stale copy of itself.
    Stale,
    /// The victim fails and returns; the power is cut mid-recovery.
    CrashRecovery,
    /// A power cut, then a second one inside `assemble --run`'s `nth`
    /// metadata write.
    CrashAssembly { nth: u32 },
}

impl Fault {
    /// The kind's name, as the campaign counts them.
    pub fn kind(self) -> &'static str {
        match self {
            Fault::Crash => "crash",
            Fault::CrashMeta { .. } => "crash-metadata",
            Fault::Kill => "kill",
            Fault::KillMeta { .. } => "kill-metadata",
            Fault::WriteErrors => "write-errors",
            Fault::Vanish => "vanish",
            Fault::Corrupt(_) => "corrupt-metadata",
            Fault::Blank { .. } => "blank-disk",
            Fault::Stale => "stale-copy",
            Fault::CrashRecovery => "crash-in-recovery",
            Fault::CrashAssembly { .. } => "crash-in-assembly",
        }
    }
}

/// The daemon's metadata moments.
pub const META_POINTS: &[&str] = &[
    "sb-write-before",
    "sb-write-torn",
    "sb-write-after",
    "before-can-clear-true",
];

/// One run.
#[derive(Clone, Debug)]
pub struct Run {
    pub seed: u64,
    /// md level: 1, 10, 5 or 6.
    pub level: u32,
    /// Active members.
    pub members: usize,
    /// Stripe chunk in KiB (levels 10, 5, 6).
    pub chunk_kib: u64,
    /// Bitmap chunk in KiB.
    pub bitmap_kib: u64,
    /// Writes of the workload.
    pub writes: u64,
    /// Acknowledged writes before the fault.
    pub at: u64,
    /// The member slot the fault hits.
    pub victim: usize,
    pub fault: Fault,
    /// md layout as mdadm spells it (levels 10, 5, 6).
    pub layout: Option<&'static str>,
    /// A raid1 leg flagged write-mostly (reads go to the others).
    pub write_mostly: Option<usize>,
}

/// Backing disks the guest gets: members on the first four, a spare (the
/// blank disk, the stale copy) on the fifth, the acknowledgement log and the
/// campaign's progress on the sixth.
pub const DATA_DISKS: usize = 5;
pub const DISK_MIB: u64 = 24;
pub const LOG_DISK_MIB: u64 = 4;

impl Run {
    pub fn from_seed(seed: u64) -> Run {
        let mut r = Rng::new(seed);
        let level = r.weighted(&[(1, 1u32), (1, 10), (1, 5), (1, 6)]);
        let members = match level {
            1 => r.range(2, 3) as usize,
            10 | 5 => r.range(3, 4) as usize,
            _ => 4,
        };
        let chunk_kib = [64, 128, 256][r.range(0, 2) as usize];
        let bitmap_kib = [64, 128, 512, 1024][r.range(0, 3) as usize];
        let writes = r.range(150, 500);
        let at = r.range(1, writes - 1);
        let victim = r.range(0, members as u64 - 1) as usize;
        let point = META_POINTS[r.range(0, META_POINTS.len() as u64 - 1) as usize];
        let nth = if point == "before-can-clear-true" {
            // The array becomes whole at the start and after the rebuild.
            r.range(1, 2) as u32
        } else {
            // The assembly writes one record per member; most moments fall
            // in the workload after it.
            r.range(1, 12) as u32
        };
        let corruption = [
            Corruption::Newest,
            Corruption::Oldest,
            Corruption::Both,
            Corruption::TornNewest,
        ][r.range(0, 3) as usize];
        let fault = r.weighted(&[
            (3, Fault::Crash),
            (3, Fault::CrashMeta { point, nth }),
            (1, Fault::Kill),
            (1, Fault::KillMeta { point, nth }),
            (2, Fault::WriteErrors),
            (2, Fault::Vanish),
            (2, Fault::Corrupt(corruption)),
            // A power cut and a lost member together on raid5/6 is the
            // write hole (mdextctl refuses the start without --force): out
            // of the campaign's faults there, see docs/reliability.md.
            (
                1,
                Fault::Blank {
                    crash: nth % 2 == 0 && matches!(level, 1 | 10),
                },
            ),
            (2, Fault::Stale),
            (2, Fault::CrashRecovery),
            (2, Fault::CrashAssembly { nth: nth.min(3) }),
        ]);
        // Drawn last, so the fields above keep the values they had before
        // layouts were drawn.
        let layout = match level {
            10 => Some(["n2", "f2", "o2"][r.range(0, 2) as usize]),
            5 => Some(
                [
                    "left-symmetric",
                    "left-asymmetric",
                    "right-symmetric",
                    "right-asymmetric",
                    "parity-first",
                    "parity-last",
                ][r.range(0, 5) as usize],
            ),
            6 => Some(
                [
                    "left-symmetric",
                    "left-asymmetric",
                    "right-symmetric",
                    "right-asymmetric",
                ][r.range(0, 3) as usize],
            ),
            _ => None,
        };
        let write_mostly = (level == 1 && r.range(0, 2) == 0).then(|| r.range(0, 1) as usize);
        Run {
            layout,
            write_mostly,
            seed,
            level,
            members,
            chunk_kib,
            bitmap_kib,
            writes,
            at,
            victim,
            fault,
        }
    }

    /// One line: what the run is.
    pub fn describe(&self) -> String {
        let chunk = if self.level == 1 {
            String::new()
        } else {
            format!(" chunk {}K", self.chunk_kib)
        };
        let layout = self.layout.map_or(String::new(), |l| format!(" {l}"));
        let wm = self
            .write_mostly
            .map_or(String::new(), |i| format!(" (slot {i} write-mostly)"));
        format!(
            "raid{}{layout} x{}{chunk}{wm} bitmap {}K, {} writes, {:?} on slot {} at write {}",
            self.level,
            self.members,
            self.bitmap_kib,
            self.writes,
            self.fault,
            self.victim,
            self.at
        )
    }
}

/// A 4 KiB block of the writer: where write `i` of the run goes. Writes
/// fall in a few 64 KiB regions so the dirty set stays a small part of the
/// array.
pub fn block_of(seed: u64, i: u64, nblocks: u64) -> u64 {
    let mut r = Rng::new(seed ^ 0x005E_ED0F_B10C);
    let regions = r.range(4, 24);
    let span = (nblocks / 16).max(1);
    let h = mix(seed ^ i.wrapping_mul(0xD6E8_FEB8_6659_FD93));
    let region = h % regions;
    let mut rr = Rng::new(seed ^ mix(region + 1));
    let start = (rr.next() % span) * 16;
    (start + (h >> 32) % 16).min(nblocks - 1)
}

/// The 4 KiB written by write `gen` of run `seed` to `block`: a header
/// (magic, seed, block, generation), a fill from the three, and a CRC32C of
/// the rest at the end.
pub fn stamp(seed: u64, block: u64, gen: u64) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    b[0..8].copy_from_slice(b"MDXTORT1");
    b[8..16].copy_from_slice(&seed.to_le_bytes());
    b[16..24].copy_from_slice(&block.to_le_bytes());
    b[24..32].copy_from_slice(&gen.to_le_bytes());
    let mut x = mix(seed ^ mix(block) ^ mix(gen.wrapping_add(7)));
    for w in b[32..4088].chunks_mut(8) {
        x = mix(x);
        w.copy_from_slice(&x.to_le_bytes()[..w.len()]);
    }
    let crc = crc32c::crc32c(&b[..4092]);
    b[4092..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// What a block read back holds, for the failure message.
pub fn describe_block(b: &[u8]) -> String {
    if b.iter().all(|&x| x == 0) {
        return "zeros".into();
    }
    if b.len() >= 4096 && &b[0..8] == b"MDXTORT1" {
        let word = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
        let crc_ok = crc32c::crc32c(&b[..4092]).to_le_bytes() == b[4092..4096];
        return format!(
            "stamp seed {:#x} block {} gen {} (crc {})",
            word(8),
            word(16),
            word(24),
            if crc_ok { "ok" } else { "BAD" }
        );
    }
    "foreign bytes".into()
}
