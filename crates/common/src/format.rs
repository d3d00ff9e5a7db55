//! Numbers as people read them: credits, counts, latencies, percentages and
//! round chart scales.
//!
//! Plain functions of plain values, so the dashboard's formatting is tested
//! on the host with the rest of the workspace (`cargo test`), no browser
//! needed. Money is formatted from integer micro-credits, never from a float.

const MICROS_PER_CREDIT: i64 = 1_000_000;

/// Groups the digits of a whole number by thousands: `1234567` → `1,234,567`.
fn grouped(digits: &str) -> String {
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Micro-credits as credits with all six decimals, `-0.002100`, `1,250.000000`:
/// exact integer arithmetic, never a float, so what is shown is what is stored.
pub fn credits(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let abs = micros.unsigned_abs();
    let per = MICROS_PER_CREDIT.unsigned_abs();
    let whole = grouped(&(abs / per).to_string());
    let frac = abs % per;
    format!("{sign}{whole}.{frac:06}")
}

/// An amount of micro-credits (money is always integer micro-credits).
///
/// `Display` is what people read: two decimals from one credit up
/// (`19.66`, `1,250.00`), below that the significant digits up to the
/// sixth decimal (`0.0021`, `0.000001`), rounded half away from zero. The
/// alternate form (`{:#}`) is exact, all six decimals (`19.660341`): for
/// hover titles, exports and statements. `FromStr` reads what
/// [`parse_credits`] reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Micros(pub i64);

impl std::fmt::Display for Micros {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if f.alternate() {
            return f.write_str(&credits(self.0));
        }
        f.write_str(&readable_credits(self.0))
    }
}

impl std::str::FromStr for Micros {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_credits(s)
            .map(Micros)
            .ok_or_else(|| format!("{s:?} is not an amount of credits with at most six decimals"))
    }
}

/// Micro-credits as people read them; see [`Micros`].
pub fn readable_credits(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let abs = micros.unsigned_abs();
    let per = MICROS_PER_CREDIT.unsigned_abs();
    if abs >= per {
        // Round to hundredths, half away from zero.
        let cents = (abs + 5_000) / 10_000;
        let whole = grouped(&(cents / 100).to_string());
        return format!("{sign}{whole}.{:02}", cents % 100);
    }
    if abs == 0 {
        return "0".to_owned();
    }
    let frac = format!("{abs:06}");
    format!("{sign}0.{}", frac.trim_end_matches('0'))
}

/// Reads an amount of credits typed by a person (`12`, `0.5`, `1,000.25`) as
/// micro-credits; `None` when it is not a number or has more than six decimals.
pub fn parse_credits(text: &str) -> Option<i64> {
    let text: String = text
        .trim()
        .chars()
        .filter(|c| *c != ',' && *c != '_')
        .collect();
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.as_str()),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if (whole.is_empty() && frac.is_empty())
        || frac.len() > 6
        || !whole
            .chars()
            .chain(frac.chars())
            .all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let whole: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let frac: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<6}").parse().ok()?
    };
    let micros = whole.checked_mul(MICROS_PER_CREDIT)?.checked_add(frac)?;
    Some(if negative { -micros } else { micros })
}

/// A whole number with thousands separators: `12,345`.
pub fn count(v: f64) -> String {
    let n = v.round() as i64;
    let sign = if n < 0 { "-" } else { "" };
    format!("{sign}{}", grouped(&n.unsigned_abs().to_string()))
}

/// At most two decimals, without trailing zeros: axis steps such as 0.25 and
/// 0.75 keep their value (one decimal drew them as 0.2 and 0.8).
pub fn short_number(v: f64) -> String {
    let text = format!("{v:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Milliseconds on an axis: `0.75 ms`, `2 ms`, `250 ms`.
pub fn ms_axis(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0} ms")
    } else {
        format!("{} ms", short_number(v))
    }
}

/// A percentage on an axis: `0.25%`, `12.5%`.
pub fn pct_axis(v: f64) -> String {
    format!("{}%", short_number(v))
}

/// Credits on an axis: the exact micro-credit formatting without trailing zeros.
pub fn credit_axis(v: f64) -> String {
    let text = credits((v * 1_000_000.0).round() as i64);
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Errors as a share of calls with one decimal, rounded half up: `19.5%`;
/// `–` when there were no calls.
pub fn error_rate(errors: i64, calls: i64) -> String {
    if calls == 0 {
        return "–".to_owned();
    }
    let tenths = (errors * 1000 + calls / 2) / calls;
    format!("{}.{}%", tenths / 10, tenths % 10)
}

/// A latency from microseconds, with its unit and three significant
/// digits at most: `60 µs`, `1.25 ms`, `12.3 ms`, `250 ms`, `1.5 s`.
pub fn millis(us: i64) -> String {
    let us = us.max(0);
    if us < 1_000 {
        return format!("{us} µs");
    }
    if us >= 10_000_000 {
        return format!("{:.0} s", us as f64 / 1e6);
    }
    if us >= 1_000_000 {
        return format!("{} s", short_number(us as f64 / 1e6));
    }
    let ms = us as f64 / 1000.0;
    if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else if ms >= 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

/// A round upper bound and tick step for values up to `max`: 1, 2,
/// 2.5 or 5 times a power of ten, four or five ticks.
pub fn nice_scale(max: f64) -> (f64, f64) {
    if !max.is_finite() || max <= 0.0 {
        return (1.0, 0.25);
    }
    let rough = max / 4.0;
    let magnitude = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= rough)
        .unwrap_or(10.0 * magnitude);
    ((max / step).ceil() * step, step)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_are_round_and_cover_the_maximum() {
        assert_eq!(nice_scale(0.0), (1.0, 0.25));
        assert_eq!(nice_scale(f64::NAN), (1.0, 0.25));
        assert_eq!(nice_scale(7.0), (8.0, 2.0));
        assert_eq!(nice_scale(100.0), (100.0, 25.0));
        assert_eq!(nice_scale(101.0), (150.0, 50.0));
        for max in [0.01, 0.7, 3.0, 19.5, 999.0, 12_345.0, 7e9] {
            let (top, step) = nice_scale(max);
            let ticks = top / step;
            assert!(top >= max, "{max}: {top}");
            assert!((3.0..=5.0).contains(&ticks.round()), "{max}: {ticks} ticks");
        }
    }

    #[test]
    fn counts_are_grouped_by_thousands() {
        assert_eq!(count(1_234_567.0), "1,234,567");
        assert_eq!(count(999.0), "999");
        assert_eq!(count(1000.0), "1,000");
        assert_eq!(count(-12_345.4), "-12,345");
        assert_eq!(count(0.0), "0");
    }

    #[test]
    fn axis_labels_keep_quarter_steps() {
        assert_eq!(pct_axis(0.25), "0.25%");
        assert_eq!(pct_axis(0.75), "0.75%");
        assert_eq!(pct_axis(0.0), "0%");
        assert_eq!(pct_axis(12.5), "12.5%");
        assert_eq!(ms_axis(0.75), "0.75 ms");
        assert_eq!(ms_axis(2.0), "2 ms");
        assert_eq!(ms_axis(250.4), "250 ms");
        assert_eq!(credit_axis(0.0025), "0.0025");
        assert_eq!(credit_axis(1500.0), "1,500");
    }

    #[test]
    fn error_rates_and_latencies_round_as_read() {
        assert_eq!(error_rate(0, 0), "–");
        assert_eq!(error_rate(39, 200), "19.5%");
        assert_eq!(error_rate(1, 3), "33.3%");
        assert_eq!(error_rate(2, 3), "66.7%");
        assert_eq!(error_rate(5, 5), "100.0%");
        assert_eq!(millis(60), "60 µs");
        assert_eq!(millis(-5), "0 µs");
        assert_eq!(millis(1_250), "1.25 ms");
        assert_eq!(millis(12_345), "12.3 ms");
        assert_eq!(millis(250_400), "250 ms");
        assert_eq!(millis(1_500_000), "1.5 s");
        assert_eq!(millis(42_000_000), "42 s");
    }

    #[test]
    fn readable_credits_round_above_one_and_keep_what_matters_below() {
        let cases = [
            (0, "0"),
            (19_660_341, "19.66"),
            (19_665_000, "19.67"),
            (-19_665_000, "-19.67"),
            (1_250_000_000, "1,250.00"),
            (110_000_000, "110.00"),
            (1_000_000, "1.00"),
            (999_999, "0.999999"),
            (500_000, "0.5"),
            (2_100, "0.0021"),
            (1, "0.000001"),
            (-2_100, "-0.0021"),
        ];
        for (micros, text) in cases {
            assert_eq!(Micros(micros).to_string(), text, "{micros}");
        }
        assert_eq!(format!("{:#}", Micros(19_660_341)), "19.660341");
        assert_eq!("1,250.5".parse::<Micros>(), Ok(Micros(1_250_500_000)));
        assert!("1.2345678".parse::<Micros>().is_err());
        assert_eq!(readable_credits(i64::MIN), "-9,223,372,036,854.78");
    }

    #[test]
    fn credits_are_exact_and_read_back() {
        assert_eq!(credits(0), "0.000000");
        assert_eq!(credits(-2_100), "-0.002100");
        assert_eq!(credits(1_250_000_000), "1,250.000000");
        assert_eq!(credits(i64::MIN), "-9,223,372,036,854.775808");
        for micros in [0, 1, -1, 999_999, 1_000_000, 19_660_341, -2_100, i64::MAX] {
            assert_eq!(parse_credits(&credits(micros)), Some(micros), "{micros}");
        }
        assert_eq!(parse_credits("12"), Some(12_000_000));
        assert_eq!(parse_credits(" 0.5 "), Some(500_000));
        assert_eq!(parse_credits(".25"), Some(250_000));
        for bad in ["", ".", "1.2345678", "1e3", "--1", "1.2.3", "abc"] {
            assert_eq!(parse_credits(bad), None, "{bad:?}");
        }
        assert_eq!(parse_credits("9223372036854775807"), None, "overflow");
    }
}
