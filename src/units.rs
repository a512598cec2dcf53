//! Size and offset units.
//!
//! md's sysfs mixes units: `component_size` and `dev-*/size` are KiB,
//! `dev-*/offset`, `bitmap/location`, `resync_start` and `sync_completed`
//! are 512-byte sectors, `bitmap/chunksize` is bytes. Each unit is its own
//! type so a value in one cannot be passed where another is expected; the
//! conversions are explicit and checked.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Bytes per sector as md counts them (always 512, whatever the device's
/// logical block size).
pub const SECTOR_SIZE: u64 = 512;

macro_rules! unit {
    ($(#[$m:meta])* $name:ident, $suffix:expr) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw count.
            pub const fn get(self) -> u64 {
                self.0
            }
            /// Checked addition.
            pub fn checked_add(self, o: Self) -> Option<Self> {
                self.0.checked_add(o.0).map(Self)
            }
            /// Checked subtraction.
            pub fn checked_sub(self, o: Self) -> Option<Self> {
                self.0.checked_sub(o.0).map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}", self.0, $suffix)
            }
        }

        impl std::ops::Add for $name {
            type Output = Self;
            fn add(self, o: Self) -> Self {
                Self(self.0 + o.0)
            }
        }

        impl std::ops::Sub for $name {
            type Output = Self;
            fn sub(self, o: Self) -> Self {
                Self(self.0 - o.0)
            }
        }
    };
}

unit!(
    /// A count or offset in bytes.
    Bytes,
    " B"
);
unit!(
    /// A count or offset in 512-byte sectors.
    Sectors,
    " sectors"
);
unit!(
    /// A count in KiB (md's `component_size` and `dev-*/size`).
    KiB,
    " KiB"
);

impl Sectors {
    /// The same quantity in bytes.
    pub const fn bytes(self) -> Bytes {
        Bytes(self.0 * SECTOR_SIZE)
    }
    /// The same quantity in KiB, rounded down (2 sectors = 1 KiB).
    pub const fn kib_floor(self) -> KiB {
        KiB(self.0 / 2)
    }
}

impl Bytes {
    /// Whole sectors, or `None` if not a multiple of 512.
    pub const fn sectors_exact(self) -> Option<Sectors> {
        if self.0 % SECTOR_SIZE == 0 {
            Some(Sectors(self.0 / SECTOR_SIZE))
        } else {
            None
        }
    }
    /// Sectors, rounded down.
    pub const fn sectors_floor(self) -> Sectors {
        Sectors(self.0 / SECTOR_SIZE)
    }
    /// Round up to a multiple of `align` (a power of two).
    pub const fn align_up(self, align: u64) -> Bytes {
        Bytes((self.0 + align - 1) & !(align - 1))
    }
    /// Round down to a multiple of `align` (a power of two).
    pub const fn align_down(self, align: u64) -> Bytes {
        Bytes(self.0 & !(align - 1))
    }
}

impl KiB {
    /// The same quantity in sectors.
    pub const fn sectors(self) -> Sectors {
        Sectors(self.0 * 2)
    }
    /// The same quantity in bytes.
    pub const fn bytes(self) -> Bytes {
        Bytes(self.0 * 1024)
    }
}

/// Parse a size like `64K`, `1M`, `2G`, `4096` (bytes when no suffix).
/// Suffixes are binary (K = 1024) and case-insensitive; `KiB`/`KB` spellings
/// are accepted too.
pub fn parse_size(s: &str) -> Result<Bytes, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty size".into());
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suf) = t.split_at(split);
    if num.is_empty() {
        return Err(format!("size '{s}' does not start with a number"));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("size '{s}' is out of range"))?;
    let mult: u64 = match suf.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "s" => SECTOR_SIZE,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "size '{s}' has an unknown suffix '{suf}' (use K, M, G, T or s for sectors)"
            ))
        }
    };
    n.checked_mul(mult)
        .map(Bytes)
        .ok_or_else(|| format!("size '{s}' is out of range"))
}

/// Human-readable binary size (`64.0 KiB`, `1.5 GiB`).
pub fn human(b: Bytes) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b.0 as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{} B", b.0)
    } else {
        format!("{v:.1} {}", U[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096"), Ok(Bytes(4096)));
        assert_eq!(parse_size("64K"), Ok(Bytes(65536)));
        assert_eq!(parse_size("64k"), Ok(Bytes(65536)));
        assert_eq!(parse_size("1M"), Ok(Bytes(1 << 20)));
        assert_eq!(parse_size("2GiB"), Ok(Bytes(2 << 30)));
        assert_eq!(parse_size("8s"), Ok(Bytes(4096)));
        assert!(parse_size("").is_err());
        assert!(parse_size("K").is_err());
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("18446744073709551615K").is_err());
    }

    #[test]
    fn conversions() {
        assert_eq!(KiB(12000).sectors(), Sectors(24000));
        assert_eq!(Sectors(2048).bytes(), Bytes(1 << 20));
        assert_eq!(Bytes(1000).sectors_exact(), None);
        assert_eq!(Bytes(1024).sectors_exact(), Some(Sectors(2)));
        assert_eq!(Bytes(5000).align_up(4096), Bytes(8192));
        assert_eq!(Bytes(5000).align_down(4096), Bytes(4096));
        assert_eq!(Sectors(3).kib_floor(), KiB(1));
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(Bytes(100)), "100 B");
        assert_eq!(human(Bytes(1536)), "1.5 KiB");
        assert_eq!(human(Bytes(1 << 30)), "1.0 GiB");
    }
}
