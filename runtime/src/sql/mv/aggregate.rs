//! Incremental aggregates: COUNT, COUNT(DISTINCT), SUM, MIN, MAX, AVG, updated row by row
//! from Arrow arrays, merged (session windows), serialized into the view's changelog and
//! turned back into Arrow values of DataFusion's output type.

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type};

use super::super::SqlError;
use super::plan::AggregateKind;

/// An aggregate argument for one batch, cast to one of the three kinds the state keeps.
pub(crate) enum Argument {
    /// `COUNT(*)`: no argument.
    None,
    Int(Int64Array),
    Float(Float64Array),
    Text(StringArray),
}

impl Argument {
    /// Casts an evaluated argument: integers, timestamps, dates and booleans to Int64,
    /// floats and decimals to Float64, everything else to text.
    pub(crate) fn from_array(array: &ArrayRef, kind: AggregateKind) -> Result<Argument, SqlError> {
        let cast_to = |to: &DataType| {
            cast(array, to)
                .map_err(|e| SqlError::Execution(format!("aggregate argument of type {}: {e}", array.data_type())))
        };
        let data_type = array.data_type();
        let as_float =
            data_type.is_floating() || matches!(data_type, DataType::Decimal128(..) | DataType::Decimal256(..));
        let as_int = data_type.is_integer()
            || matches!(data_type, DataType::Timestamp(..) | DataType::Date32 | DataType::Date64 | DataType::Boolean);
        if as_float || (kind == AggregateKind::Avg && as_int) {
            return Ok(Argument::Float(cast_to(&DataType::Float64)?.as_primitive::<Float64Type>().clone()));
        }
        if as_int {
            return Ok(Argument::Int(cast_to(&DataType::Int64)?.as_primitive::<Int64Type>().clone()));
        }
        if matches!(kind, AggregateKind::Sum) {
            return Err(SqlError::Plan(format!("SUM of {data_type} is not supported")));
        }
        Ok(Argument::Text(cast_to(&DataType::Utf8)?.as_string::<i32>().clone()))
    }

    fn value(&self, row: usize) -> Option<Value> {
        match self {
            Argument::None => None,
            Argument::Int(a) => a.is_valid(row).then(|| Value::Int(a.value(row))),
            Argument::Float(a) => a.is_valid(row).then(|| Value::Float(a.value(row))),
            Argument::Text(a) => a.is_valid(row).then(|| Value::Text(a.value(row).to_string())),
        }
    }

    fn is_valid(&self, row: usize) -> bool {
        match self {
            Argument::None => true,
            Argument::Int(a) => a.is_valid(row),
            Argument::Float(a) => a.is_valid(row),
            Argument::Text(a) => a.is_valid(row),
        }
    }
}

/// A value kept by MIN, MAX and COUNT(DISTINCT).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) enum Value {
    Int(i64),
    Float(f64),
    Text(String),
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Value {}

impl PartialOrd for Value {
    fn partial_cmp(&self, other: &Value) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Value {
    fn cmp(&self, other: &Value) -> Ordering {
        match (self, other) {
            (Value::Int(a), Value::Int(b)) => a.cmp(b),
            (Value::Float(a), Value::Float(b)) => a.total_cmp(b),
            (Value::Text(a), Value::Text(b)) => a.cmp(b),
            // One argument has one kind; mixed kinds only order deterministically.
            (a, b) => a.rank().cmp(&b.rank()),
        }
    }
}

impl Value {
    fn rank(&self) -> u8 {
        match self {
            Value::Int(_) => 0,
            Value::Float(_) => 1,
            Value::Text(_) => 2,
        }
    }
}

/// The running state of one aggregate of one group.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) enum Accumulator {
    Count(i64),
    SumInt(Option<i64>),
    SumFloat(Option<f64>),
    Min(Option<Value>),
    Max(Option<Value>),
    Avg { sum: f64, count: i64 },
    Distinct(BTreeSet<Value>),
}

impl Accumulator {
    pub(crate) fn new(kind: AggregateKind, output_type: &DataType) -> Accumulator {
        match kind {
            AggregateKind::Count => Accumulator::Count(0),
            AggregateKind::CountDistinct => Accumulator::Distinct(BTreeSet::new()),
            AggregateKind::Sum if output_type.is_integer() => Accumulator::SumInt(None),
            AggregateKind::Sum => Accumulator::SumFloat(None),
            AggregateKind::Min => Accumulator::Min(None),
            AggregateKind::Max => Accumulator::Max(None),
            AggregateKind::Avg => Accumulator::Avg { sum: 0.0, count: 0 },
        }
    }

    /// Adds row `row` of `argument`; nulls are ignored, as SQL aggregates do.
    pub(crate) fn update(&mut self, argument: &Argument, row: usize) {
        match self {
            Accumulator::Count(count) => {
                if argument.is_valid(row) {
                    *count += 1;
                }
            }
            Accumulator::SumInt(sum) => {
                if let Argument::Int(a) = argument {
                    if a.is_valid(row) {
                        *sum = Some(sum.unwrap_or(0).wrapping_add(a.value(row)));
                    }
                }
            }
            Accumulator::SumFloat(sum) => match argument {
                Argument::Float(a) if a.is_valid(row) => *sum = Some(sum.unwrap_or(0.0) + a.value(row)),
                Argument::Int(a) if a.is_valid(row) => *sum = Some(sum.unwrap_or(0.0) + a.value(row) as f64),
                _ => {}
            },
            Accumulator::Avg { sum, count } => match argument {
                Argument::Float(a) if a.is_valid(row) => {
                    *sum += a.value(row);
                    *count += 1;
                }
                _ => {}
            },
            Accumulator::Min(current) => keep(current, argument, row, Ordering::Less),
            Accumulator::Max(current) => keep(current, argument, row, Ordering::Greater),
            Accumulator::Distinct(set) => {
                if let Some(value) = argument.value(row) {
                    set.insert(value);
                }
            }
        }
    }

    /// Folds `other` (the same aggregate of another group) into this one.
    pub(crate) fn merge(&mut self, other: &Accumulator) {
        match (self, other) {
            (Accumulator::Count(a), Accumulator::Count(b)) => *a += b,
            (Accumulator::SumInt(a), Accumulator::SumInt(Some(b))) => *a = Some(a.unwrap_or(0).wrapping_add(*b)),
            (Accumulator::SumFloat(a), Accumulator::SumFloat(Some(b))) => *a = Some(a.unwrap_or(0.0) + b),
            (Accumulator::Avg { sum, count }, Accumulator::Avg { sum: s, count: c }) => {
                *sum += s;
                *count += c;
            }
            (Accumulator::Min(a), Accumulator::Min(Some(b))) if a.as_ref().is_none_or(|a| b < a) => {
                *a = Some(b.clone());
            }
            (Accumulator::Max(a), Accumulator::Max(Some(b))) if a.as_ref().is_none_or(|a| b > a) => {
                *a = Some(b.clone());
            }
            (Accumulator::Distinct(a), Accumulator::Distinct(b)) => a.extend(b.iter().cloned()),
            _ => {}
        }
    }
}

/// Keeps in `current` the smaller (`Less`) or larger (`Greater`) of it and row `row`.
fn keep(current: &mut Option<Value>, argument: &Argument, row: usize, wanted: Ordering) {
    // Compare in place first: a string is only copied when it wins.
    let wins = match (argument, current.as_ref()) {
        (_, None) => argument.is_valid(row) && !matches!(argument, Argument::None),
        (Argument::Int(a), Some(Value::Int(c))) => a.is_valid(row) && a.value(row).cmp(c) == wanted,
        (Argument::Float(a), Some(Value::Float(c))) => a.is_valid(row) && a.value(row).total_cmp(c) == wanted,
        (Argument::Text(a), Some(Value::Text(c))) => a.is_valid(row) && a.value(row).cmp(c.as_str()) == wanted,
        _ => false,
    };
    if wins {
        *current = argument.value(row);
    }
}

/// The values of one aggregate over several groups, as an array of `output_type`.
pub(crate) fn evaluate(accumulators: &[&Accumulator], output_type: &DataType) -> Result<ArrayRef, SqlError> {
    let first = accumulators.first().copied();
    let array: ArrayRef = match first {
        Some(Accumulator::Count(_)) | Some(Accumulator::Distinct(_)) | Some(Accumulator::SumInt(_)) => {
            Arc::new(Int64Array::from_iter(accumulators.iter().map(|a| match a {
                Accumulator::Count(c) => Some(*c),
                Accumulator::Distinct(set) => Some(set.len() as i64),
                Accumulator::SumInt(sum) => *sum,
                _ => None,
            })))
        }
        Some(Accumulator::SumFloat(_)) | Some(Accumulator::Avg { .. }) => {
            Arc::new(Float64Array::from_iter(accumulators.iter().map(|a| match a {
                Accumulator::SumFloat(sum) => *sum,
                Accumulator::Avg { sum, count } => (*count > 0).then(|| sum / *count as f64),
                _ => None,
            })))
        }
        Some(Accumulator::Min(_)) | Some(Accumulator::Max(_)) => {
            let values: Vec<Option<&Value>> = accumulators
                .iter()
                .map(|a| match a {
                    Accumulator::Min(v) | Accumulator::Max(v) => v.as_ref(),
                    _ => None,
                })
                .collect();
            extreme_array(&values)
        }
        None => arrow::array::new_empty_array(output_type),
    };
    if array.data_type() == output_type {
        return Ok(array);
    }
    cast(&array, output_type).map_err(|e| SqlError::Execution(format!("aggregate result to {output_type}: {e}")))
}

fn extreme_array(values: &[Option<&Value>]) -> ArrayRef {
    match values.iter().flatten().next() {
        Some(Value::Float(_)) => Arc::new(Float64Array::from_iter(values.iter().map(|v| match v {
            Some(Value::Float(f)) => Some(*f),
            _ => None,
        }))),
        Some(Value::Text(_)) => Arc::new(StringArray::from_iter(values.iter().map(|v| match v {
            Some(Value::Text(s)) => Some(s.as_str()),
            _ => None,
        }))),
        _ => Arc::new(Int64Array::from_iter(values.iter().map(|v| match v {
            Some(Value::Int(i)) => Some(*i),
            _ => None,
        }))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregates_update_merge_and_evaluate() {
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![Some(3), None, Some(1), Some(3)]));
        let argument = Argument::from_array(&ints, AggregateKind::Sum).expect("argument");
        let mut accumulators: Vec<Accumulator> = [
            (AggregateKind::Count, DataType::Int64),
            (AggregateKind::CountDistinct, DataType::Int64),
            (AggregateKind::Sum, DataType::Int64),
            (AggregateKind::Min, DataType::Int64),
            (AggregateKind::Max, DataType::Int64),
        ]
        .iter()
        .map(|(k, t)| Accumulator::new(*k, t))
        .collect();
        for accumulator in &mut accumulators {
            for row in 0..4 {
                accumulator.update(&argument, row);
            }
        }
        assert_eq!(accumulators[0], Accumulator::Count(3));
        assert_eq!(accumulators[2], Accumulator::SumInt(Some(7)));
        assert_eq!(accumulators[3], Accumulator::Min(Some(Value::Int(1))));
        assert_eq!(accumulators[4], Accumulator::Max(Some(Value::Int(3))));
        let distinct = evaluate(&[&accumulators[1]], &DataType::Int64).expect("evaluate");
        assert_eq!(distinct.as_primitive::<Int64Type>().value(0), 2);
        let mut avg = Accumulator::new(AggregateKind::Avg, &DataType::Float64);
        let floats = Argument::from_array(&ints, AggregateKind::Avg).expect("argument");
        for row in 0..4 {
            avg.update(&floats, row);
        }
        let mut other = avg.clone();
        other.merge(&avg);
        let values = evaluate(&[&avg, &other], &DataType::Float64).expect("evaluate");
        let values = values.as_primitive::<Float64Type>();
        assert!((values.value(0) - 7.0 / 3.0).abs() < 1e-9 && (values.value(1) - 7.0 / 3.0).abs() < 1e-9);
        let json = serde_json::to_string(&accumulators).expect("serialize");
        let back: Vec<Accumulator> = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, accumulators);
    }

    #[test]
    fn min_and_max_of_text() {
        let texts: ArrayRef = Arc::new(StringArray::from(vec![Some("pear"), Some("apple"), None]));
        let argument = Argument::from_array(&texts, AggregateKind::Min).expect("argument");
        let mut min = Accumulator::new(AggregateKind::Min, &DataType::Utf8);
        let mut max = Accumulator::new(AggregateKind::Max, &DataType::Utf8);
        for row in 0..3 {
            min.update(&argument, row);
            max.update(&argument, row);
        }
        assert_eq!(min, Accumulator::Min(Some(Value::Text("apple".into()))));
        assert_eq!(max, Accumulator::Max(Some(Value::Text("pear".into()))));
    }
}
