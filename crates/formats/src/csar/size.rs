//! TOSCA `scalar-unit.size` values.

/// Parses a TOSCA `scalar-unit.size` (e.g. `"1 GB"`, `"512 MiB"`, `"1.5 GiB"`) into bytes.
///
/// Units (case-insensitive): B, kB, KiB, MB, MiB, GB, GiB, TB, TiB; SI units are powers of 1000,
/// binary ones powers of 1024. A bare number is taken as bytes. Fractions of a byte are dropped.
pub fn parse_scalar_size(input: &str) -> Result<u64, String> {
    let s = input.trim();
    let num_end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(num_end);
    let unit = unit.trim();
    let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
    if frac_part.contains('.') || (int_part.is_empty() && frac_part.is_empty()) {
        return Err("expected a non-negative number followed by a unit".into());
    }
    let mult: u128 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" => 1 << 10,
        "mb" => 1_000_000,
        "mib" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        _ => return Err(format!("unknown size unit {unit:?}")),
    };
    let int_part = int_part.trim_start_matches('0');
    let frac = frac_part.trim_end_matches('0');
    if int_part.len() + frac.len() > 30 {
        return Err("number too large".into());
    }
    let mut digits: u128 = 0;
    for c in int_part.chars().chain(frac.chars()) {
        let d = u128::from(c.to_digit(10).ok_or("invalid digit")?);
        digits = digits * 10 + d;
    }
    let scale = 10u128.pow(frac.len() as u32);
    let bytes = digits.checked_mul(mult).ok_or("number too large")? / scale;
    u64::try_from(bytes).map_err(|_| "number too large".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalar_unit_size_parsing() {
        let cases = [
            ("1 GB", 1_000_000_000),
            ("1 GiB", 1 << 30),
            ("512 MB", 512_000_000),
            ("512 MiB", 512 << 20),
            ("2 kB", 2_000),
            ("2 KiB", 2_048),
            ("1 TB", 1_000_000_000_000),
            ("1 TiB", 1 << 40),
            ("10 B", 10),
            ("1.5 GiB", 3 << 29),
            ("0.5 kB", 500),
            ("4gb", 4_000_000_000),
            (" 8  MiB ", 8 << 20),
            ("1024", 1024),
        ];
        for (input, want) in cases {
            assert_eq!(parse_scalar_size(input), Ok(want), "{input}");
        }
        for bad in [
            "",
            "GB",
            "16 EiB",
            "-1 GB",
            "1.2.3 GB",
            "1 GBs",
            "abc",
            "1e3 MB",
            "99999999999999999999999 TiB",
        ] {
            assert!(parse_scalar_size(bad).is_err(), "{bad:?} should fail");
        }
        assert_eq!(parse_scalar_size("18446744073709551615 B"), Ok(u64::MAX));
        assert!(parse_scalar_size("18446744073709551616 B").is_err());
    }
}
