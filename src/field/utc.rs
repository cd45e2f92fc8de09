//! UTC calendar arithmetic for the hot path: reading the common shape of RFC 3339 text and
//! splitting epoch milliseconds into the parts time features use.
//!
//! chrono stays the authority. Each function here answers only for the inputs it is sure of
//! (an RFC 3339 timestamp in UTC written `YYYY-MM-DDTHH:MM:SS[.fff]Z`, a time between the
//! years 1 and 9999) and says `None` for everything else, which its caller then hands to
//! chrono; the tests check both against chrono on many generated values.

use super::UtcParts;

const MS_PER_DAY: i64 = 86_400_000;
/// 0001-01-01T00:00:00Z in epoch milliseconds: the first time [`utc_parts`] answers for.
const FIRST_MS: i64 = -62_135_596_800_000;
/// 10000-01-01T00:00:00Z in epoch milliseconds: the first time it leaves to chrono.
const END_MS: i64 = 253_402_300_800_000;

/// Days from 1970-01-01 to the proleptic Gregorian date `year-month-day` (month 1..=12).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    // Howard Hinnant's days_from_civil: years start in March, so the leap day ends a year.
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = i64::from((month + 9) % 12);
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The month (1..=12) of the day `days` after 1970-01-01.
fn month_of_day(days: i64) -> u32 {
    // Howard Hinnant's civil_from_days, as far as the month.
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    // 0..=11 from March, so the cast cannot truncate.
    let month_from_march = month_from_march as u32;
    if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    }
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// The UTC parts of `ms`, for times from the year 1 to the year 9999; `None` outside.
pub(super) fn parts(ms: i64) -> Option<UtcParts> {
    if !(FIRST_MS..END_MS).contains(&ms) {
        return None;
    }
    Some(UtcParts {
        hour: hour(ms),
        weekday: weekday(ms),
        month0: month_of_day(ms.div_euclid(MS_PER_DAY)) - 1,
    })
}

/// The UTC hour of day (0..=23) of `ms`: exact for every time, as days are 86,400 s long
/// without leap seconds in epoch time.
pub(super) fn hour(ms: i64) -> u32 {
    // Below 24: the cast cannot truncate.
    (ms.rem_euclid(MS_PER_DAY) / 3_600_000) as u32
}

/// The UTC day of week (Monday = 0 .. Sunday = 6) of `ms`: exact for every time, as the
/// proleptic Gregorian calendar's weeks run on without a break.
pub(super) fn weekday(ms: i64) -> u32 {
    // 1970-01-01 was a Thursday, day 3 counting from Monday. Below 7: the cast cannot
    // truncate.
    (ms.div_euclid(MS_PER_DAY) + 3).rem_euclid(7) as u32
}

/// Epoch milliseconds of RFC 3339 text in the shape `YYYY-MM-DDTHH:MM:SS[.f…]Z` (`T` or `Z`
/// in either case, or a space for `T`) naming a real date and time; `None` for any other
/// text, valid or not, which chrono must then read. Like chrono, digits past the ninth of
/// the fraction are ignored, and milliseconds are the fraction rounded down.
pub(super) fn parse_rfc3339_zulu(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let digit = |i: usize| -> Option<u32> {
        let d = b[i].wrapping_sub(b'0');
        (d < 10).then_some(u32::from(d))
    };
    let two = |i: usize| -> Option<u32> { Some(digit(i)? * 10 + digit(i + 1)?) };
    let year = i64::from(two(0)? * 100 + two(2)?);
    let month = two(5)?;
    let day = two(8)?;
    let hour = two(11)?;
    let minute = two(14)?;
    let second = two(17)?;
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    // A leap second (60) and every invalid field are chrono's to judge.
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let (millis, zone) = match b[19] {
        b'.' => {
            let fraction = &b[20..];
            let digits = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
            if digits == 0 {
                return None;
            }
            let millis = fraction[..digits.min(3)]
                .iter()
                .chain(std::iter::repeat(&b'0'))
                .take(3)
                .fold(0, |acc, c| acc * 10 + i64::from(c - b'0'));
            (millis, 20 + digits)
        }
        _ => (0, 19),
    };
    if zone + 1 != b.len() || !matches!(b[zone], b'Z' | b'z') {
        return None;
    }
    let seconds =
        days_from_civil(year, month, day) * 86_400 + i64::from(hour * 3600 + minute * 60 + second);
    Some(seconds * 1000 + millis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Datelike, Timelike, Utc};

    /// What chrono reads, as the field parser asks it.
    fn chrono_ms(text: &str) -> Option<i64> {
        DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| t.with_timezone(&Utc).timestamp_millis())
    }

    fn chrono_parts(ms: i64) -> UtcParts {
        let t = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default();
        UtcParts {
            hour: t.hour(),
            weekday: t.weekday().num_days_from_monday(),
            month0: t.month0(),
        }
    }

    /// A small deterministic generator (SplitMix64), so failures reproduce.
    struct Numbers(u64);

    impl Numbers {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// The fast path never disagrees with chrono: when it answers, chrono gives the same
    /// milliseconds; when chrono refuses, so does it.
    fn check(text: &str) -> Option<i64> {
        let fast = parse_rfc3339_zulu(text);
        if let Some(ms) = fast {
            assert_eq!(Some(ms), chrono_ms(text), "{text:?}");
        }
        fast
    }

    #[test]
    fn the_common_shape_reads_as_chrono_reads_it() {
        for (text, ms) in [
            ("2025-02-11T10:13:43Z", 1_739_268_823_000),
            ("1970-01-01T00:00:00Z", 0),
            ("1969-12-31T23:59:59.999Z", -1),
            ("2024-03-05T12:30:00.5Z", 1_709_641_800_500),
            ("2024-03-05t12:30:00.123456789z", 1_709_641_800_123),
            ("2024-03-05 12:30:00.1239999999999Z", 1_709_641_800_123),
            ("2024-02-29T00:00:00Z", 1_709_164_800_000),
            ("2000-02-29T23:59:59Z", 951_868_799_000),
            ("0001-01-01T00:00:00Z", FIRST_MS),
            ("9999-12-31T23:59:59.999Z", END_MS - 1),
            ("0000-02-29T00:00:00Z", -62_162_121_600_000),
        ] {
            assert_eq!(check(text), Some(ms), "{text}");
        }
    }

    #[test]
    fn everything_else_is_left_to_chrono() {
        for text in [
            "2024-03-05T14:30:00+02:00",
            "2024-03-05T14:30:00-00:00",
            "2024-03-05T14:30:00",
            "2024-03-05T14:30:00ZZ",
            "2024-03-05T14:30:00.Z",
            "2024-03-05T14:30:00,5Z",
            "2024-03-05T23:59:60Z",
            "2025-02-30T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2025-04-31T00:00:00Z",
            "2025-00-10T00:00:00Z",
            "2025-13-10T00:00:00Z",
            "2025-01-00T00:00:00Z",
            "2025-01-10T24:00:00Z",
            "2025-01-10T23:60:00Z",
            "2025-01-10T23:00:61Z",
            "2025-1-10T23:00:00Z",
            "+2025-01-10T23:00:00Z",
            "2025-01-10X23:00:00Z",
            "2025/01/10T23:00:00Z",
            "２025-01-10T23:00:00Z",
            "2025-01-10T23:00:00.12a3Z",
            "",
            "Z",
        ] {
            assert_eq!(check(text), None, "{text:?}");
        }
        // A leap second is valid: chrono reads it.
        assert!(chrono_ms("2016-12-31T23:59:60Z").is_some());
    }

    #[test]
    fn generated_timestamps_read_as_chrono_reads_them() {
        let mut n = Numbers(7);
        let separators = [b'T', b't', b' ', b'x'];
        let zones = ["Z", "z", "+02:00", "-05:30", "", "+00:00", "Zz"];
        let mut fast = 0;
        for _ in 0..200_000 {
            let year = match n.below(4) {
                0 => n.below(10_000),
                1 => 1900 + n.below(300),
                _ => 1996 + n.below(40),
            };
            // Mostly valid fields, sometimes just past their range.
            let month = n.below(14);
            let day = n.below(33);
            let hour = n.below(26);
            let minute = n.below(62);
            let second = n.below(62);
            let fraction = match n.below(4) {
                0 => String::new(),
                1 => ".".into(),
                _ => {
                    let digits = 1 + n.below(12) as usize;
                    let f = format!("{:012}", n.below(1_000_000_000_000));
                    format!(".{}", &f[..digits])
                }
            };
            let sep = separators[n.below(8).min(3) as usize] as char;
            let zone = zones[(n.below(10) as usize).min(zones.len() - 1) % zones.len()];
            let text = format!(
                "{year:04}-{month:02}-{day:02}{sep}{hour:02}:{minute:02}:{second:02}{fraction}{zone}"
            );
            let got = check(&text);
            if got.is_some() {
                fast += 1;
            } else if matches!(zone, "Z" | "z")
                && matches!(sep, 'T' | 't' | ' ')
                && fraction != "."
                && second < 60
            {
                assert_eq!(chrono_ms(&text), None, "the fast path refused {text:?}");
            }
        }
        assert!(fast > 5_000, "the fast path answered only {fast} times");
    }

    #[test]
    fn parts_agree_with_chrono() {
        let mut n = Numbers(11);
        let edges = [
            0,
            -1,
            1,
            FIRST_MS - 1,
            FIRST_MS,
            END_MS - 1,
            END_MS,
            i64::MIN,
            i64::MAX,
            crate::field::MIN_TIMESTAMP_MS,
            crate::field::MAX_TIMESTAMP_MS - 1,
            951_782_400_000,     // 2000-02-29
            -2_203_977_600_000,  // 1900-03-01
            -62_162_121_600_000, // 0000-02-29
        ];
        for ms in edges {
            if let Some(p) = parts(ms) {
                assert_eq!(p, chrono_parts(ms), "{ms}");
            }
        }
        for _ in 0..200_000 {
            let ms = FIRST_MS + n.below((END_MS - FIRST_MS) as u64) as i64;
            assert_eq!(parts(ms), Some(chrono_parts(ms)), "{ms}");
        }
        for _ in 0..2_000 {
            let ms = n.next() as i64;
            if let Some(p) = parts(ms) {
                assert_eq!(p, chrono_parts(ms), "{ms}");
            }
        }
    }

    /// The hour and the day of week need no calendar: they agree with chrono at every time
    /// chrono holds (about ±262,000 years), far beyond the years `parts` answers for.
    #[test]
    fn hour_and_weekday_agree_with_chrono_at_every_time() {
        let reach = 8_000_000_000_000_000i64;
        let mut n = Numbers(5);
        let edges = [-reach, reach, FIRST_MS - 1, END_MS, -1, 0, 1];
        let spread = (0..200_000).map(|_| n.below(2 * reach as u64) as i64 - reach);
        for ms in edges.into_iter().chain(spread) {
            let c = chrono_parts(ms);
            assert_eq!((hour(ms), weekday(ms)), (c.hour, c.weekday), "{ms}");
        }
    }
}
