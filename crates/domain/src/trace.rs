//! Where a request stands in a distributed trace, in the terms of W3C
//! Trace Context: the trace it belongs to and Maestro's own span in it, so
//! that the backend calls a request makes continue its caller's trace.

use std::fmt;

/// The id of a whole trace: 16 bytes, never all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId([u8; 16]);

impl TraceId {
    /// The id these bytes spell; `None` for all zeros, which names no
    /// trace.
    pub fn from_bytes(bytes: [u8; 16]) -> Option<Self> {
        (bytes != [0; 16]).then_some(Self(bytes))
    }

    /// The id's bytes.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0
    }
}

/// The id of one span of a trace: 8 bytes, never all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId([u8; 8]);

impl SpanId {
    /// The id these bytes spell; `None` for all zeros, which names no span.
    pub fn from_bytes(bytes: [u8; 8]) -> Option<Self> {
        (bytes != [0; 8]).then_some(Self(bytes))
    }

    /// The id's bytes.
    pub fn to_bytes(self) -> [u8; 8] {
        self.0
    }
}

/// An id in lower-case hexadecimal, as W3C Trace Context writes it; on the
/// stack, since every request's log line has one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HexId<const N: usize>([[u8; 2]; N]);

impl<const N: usize> HexId<N> {
    fn of(bytes: &[u8; N]) -> Self {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut text = [[0_u8; 2]; N];
        for (pair, byte) in text.iter_mut().zip(bytes) {
            *pair = [
                DIGITS[usize::from(byte >> 4)],
                DIGITS[usize::from(byte & 0x0f)],
            ];
        }
        Self(text)
    }

    /// The digits.
    pub fn as_str(&self) -> &str {
        str::from_utf8(self.0.as_flattened()).expect("hexadecimal digits are ASCII")
    }
}

impl<const N: usize> fmt::Debug for HexId<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TraceId {
    /// The id in hexadecimal, as it displays.
    pub fn hex(&self) -> HexId<16> {
        HexId::of(&self.0)
    }
}

impl SpanId {
    /// The id in hexadecimal, as it displays.
    pub fn hex(&self) -> HexId<8> {
        HexId::of(&self.0)
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hex().as_str())
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hex().as_str())
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

/// The longest `tracestate` kept: W3C Trace Context asks every participant
/// to pass on at least 512 characters; a longer one is dropped whole
/// rather than cut.
pub const MAX_TRACE_STATE_LEN: usize = 512;

/// The caller's place in its trace, as a W3C `traceparent` value names it:
/// the trace, the caller's span (the parent of Maestro's), and whether the
/// caller records the trace.
///
/// ```
/// use domain::TraceParent;
///
/// let parent = TraceParent::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
///     .expect("well-formed");
/// assert_eq!(parent.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert_eq!(parent.parent_id().to_string(), "00f067aa0ba902b7");
/// assert!(parent.is_sampled());
///
/// // Anything malformed is no parent at all: the trace starts anew.
/// assert!(TraceParent::parse(b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01").is_none());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    trace_id: TraceId,
    parent_id: SpanId,
    sampled: bool,
}

impl TraceParent {
    /// Reads a `traceparent` value as W3C Trace Context (level 1) defines
    /// it: `version-traceid-parentid-flags` in lower-case hexadecimal,
    /// version `ff` and all-zero ids refused, exactly 55 characters for
    /// version `00`, and for a later version its first 55 characters
    /// followed by nothing or by `-`. `None` for anything else.
    pub fn parse(value: &[u8]) -> Option<Self> {
        const LEN: usize = 55;
        let version = hex::<1>(value.get(..2)?)?[0];
        let fits = match version {
            0 => value.len() == LEN,
            0xff => false,
            _ => value.len() == LEN || value.get(LEN) == Some(&b'-'),
        };
        if !fits || [value[2], value[35], value[52]] != [b'-'; 3] {
            return None;
        }
        Some(Self {
            trace_id: TraceId::from_bytes(hex(&value[3..35])?)?,
            parent_id: SpanId::from_bytes(hex(&value[36..52])?)?,
            sampled: hex::<1>(&value[53..55])?[0] & SAMPLED != 0,
        })
    }

    /// The trace the caller belongs to.
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// The caller's span, which Maestro's span is the child of.
    pub fn parent_id(&self) -> SpanId {
        self.parent_id
    }

    /// Whether the caller records this trace.
    pub fn is_sampled(&self) -> bool {
        self.sampled
    }
}

/// The `sampled` bit of the trace flags.
const SAMPLED: u8 = 0x01;

/// `N` bytes from `2 * N` lower-case hexadecimal digits.
fn hex<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    fn nibble(digit: u8) -> Option<u8> {
        match digit {
            b'0'..=b'9' => Some(digit - b'0'),
            b'a'..=b'f' => Some(digit - b'a' + 10),
            _ => None,
        }
    }
    if digits.len() != 2 * N {
        return None;
    }
    let mut bytes = [0; N];
    for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(bytes)
}

/// A request's place in its trace: the trace, Maestro's own span in it
/// (the parent of whatever a backend does for the request), whether the
/// trace is recorded, and the caller's vendor-specific `tracestate`,
/// passed on unchanged.
///
/// ```
/// use domain::{SpanId, TraceContext, TraceId};
///
/// let trace = TraceContext::new(
///     TraceId::from_bytes([0xab; 16]).unwrap(),
///     SpanId::from_bytes([0x01; 8]).unwrap(),
///     true,
/// )
/// .with_state("vendor=opaque");
/// assert_eq!(
///     trace.traceparent(),
///     "00-abababababababababababababababab-0101010101010101-01"
/// );
/// assert_eq!(trace.state(), Some("vendor=opaque"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: TraceId,
    span_id: SpanId,
    sampled: bool,
    state: Option<String>,
}

impl TraceContext {
    /// The context of span `span_id` of trace `trace_id`, recorded or not.
    pub fn new(trace_id: TraceId, span_id: SpanId, sampled: bool) -> Self {
        Self {
            trace_id,
            span_id,
            sampled,
            state: None,
        }
    }

    /// The same context with the caller's `tracestate`, kept only when it
    /// is 1 to [`MAX_TRACE_STATE_LEN`] printable ASCII characters (so that
    /// it can be passed on as it came); otherwise it is left out.
    #[must_use]
    pub fn with_state(mut self, state: impl Into<String>) -> Self {
        let state = state.into();
        let usable = !state.is_empty()
            && state.len() <= MAX_TRACE_STATE_LEN
            && state
                .bytes()
                .all(|byte| byte == b' ' || byte.is_ascii_graphic());
        self.state = usable.then_some(state);
        self
    }

    /// The same trace, as seen from another of Maestro's spans (one backend
    /// call's, say).
    #[must_use]
    pub fn with_span(&self, span_id: SpanId) -> Self {
        Self {
            span_id,
            ..self.clone()
        }
    }

    /// The trace.
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// Maestro's span.
    pub fn span_id(&self) -> SpanId {
        self.span_id
    }

    /// Whether the trace is recorded.
    pub fn is_sampled(&self) -> bool {
        self.sampled
    }

    /// The caller's `tracestate`, if it sent a usable one.
    pub fn state(&self) -> Option<&str> {
        self.state.as_deref()
    }

    /// The W3C `traceparent` value that makes Maestro's span the parent of
    /// the callee's: version `00`, the trace, the span and the flags.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            self.trace_id,
            self.span_id,
            if self.sampled { SAMPLED } else { 0 }
        )
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_well_formed_traceparent_is_read() {
        let parent = TraceParent::parse(VALID.as_bytes()).unwrap();
        assert_eq!(
            parent.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(parent.parent_id().to_string(), "00f067aa0ba902b7");
        assert!(parent.is_sampled());
        let unsampled = VALID.replace("-01", "-00");
        assert!(
            !TraceParent::parse(unsampled.as_bytes())
                .unwrap()
                .is_sampled()
        );
    }

    #[test]
    fn a_later_version_is_read_by_its_first_fields() {
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(TraceParent::parse(later.as_bytes()).is_some());
        let extended = format!("{later}-what-comes-next");
        assert!(TraceParent::parse(extended.as_bytes()).is_some());
        let glued = format!("{later}x");
        assert!(TraceParent::parse(glued.as_bytes()).is_none());
    }

    #[test]
    fn a_malformed_traceparent_is_no_parent() {
        let malformed = [
            "",
            "00",
            "garbage",
            // Version ff is forbidden; version 00 has exactly four fields.
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            // Ids are lower-case hexadecimal, and not all zeros.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            // Wrong separators and lengths.
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
        ];
        for value in malformed {
            assert_eq!(TraceParent::parse(value.as_bytes()), None, "{value:?}");
        }
    }

    #[test]
    fn the_traceparent_names_maestros_span_in_the_callers_trace() {
        let parent = TraceParent::parse(VALID.as_bytes()).unwrap();
        let own = SpanId::from_bytes([0x11; 8]).unwrap();
        let trace = TraceContext::new(parent.trace_id(), own, parent.is_sampled());
        assert_eq!(
            trace.traceparent(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-01"
        );
        let call = trace.with_span(SpanId::from_bytes([0x22; 8]).unwrap());
        assert_eq!(call.trace_id(), trace.trace_id());
        assert_eq!(call.span_id().to_string(), "2222222222222222");
    }

    #[test]
    fn an_unusable_tracestate_is_left_out() {
        let trace = TraceContext::new(
            TraceId::from_bytes([1; 16]).unwrap(),
            SpanId::from_bytes([1; 8]).unwrap(),
            false,
        );
        assert_eq!(
            trace.clone().with_state("a=1, b=2").state(),
            Some("a=1, b=2")
        );
        assert_eq!(trace.clone().with_state("").state(), None);
        assert_eq!(trace.clone().with_state("a=1\r\nx: y").state(), None);
        assert_eq!(trace.clone().with_state("a=é").state(), None);
        let long = format!("a={}", "x".repeat(MAX_TRACE_STATE_LEN));
        assert_eq!(trace.with_state(long).state(), None);
    }

    #[test]
    fn all_zero_ids_are_no_ids() {
        assert_eq!(TraceId::from_bytes([0; 16]), None);
        assert_eq!(SpanId::from_bytes([0; 8]), None);
    }

    proptest! {
        #[test]
        fn ids_are_written_as_two_lower_case_digits_a_byte(
            trace in any::<[u8; 16]>(),
            span in any::<[u8; 8]>(),
        ) {
            let digits = |bytes: &[u8]| bytes.iter().map(|byte| format!("{byte:02x}")).collect::<String>();
            if let Some(id) = TraceId::from_bytes(trace) {
                prop_assert_eq!(id.to_string(), digits(&trace));
            }
            if let Some(id) = SpanId::from_bytes(span) {
                prop_assert_eq!(id.to_string(), digits(&span));
            }
        }

        #[test]
        fn every_context_reads_back_from_its_traceparent(
            trace in any::<[u8; 16]>(),
            span in any::<[u8; 8]>(),
            sampled in any::<bool>(),
        ) {
            let (Some(trace), Some(span)) = (TraceId::from_bytes(trace), SpanId::from_bytes(span))
            else {
                return Ok(());
            };
            let context = TraceContext::new(trace, span, sampled);
            let parent = TraceParent::parse(context.traceparent().as_bytes()).unwrap();
            prop_assert_eq!(parent.trace_id(), trace);
            prop_assert_eq!(parent.parent_id(), span);
            prop_assert_eq!(parent.is_sampled(), sampled);
        }

        #[test]
        fn no_input_makes_the_parser_panic(value in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = TraceParent::parse(&value);
        }
    }
}
