use palisade_circuit_breaker::*;
#[test]
fn sizes() {
    let b = CircuitBreaker::builder("x").build().unwrap();
    let inner = async { Ok::<u64, ()>(42) };
    eprintln!("inner {}", std::mem::size_of_val(&inner));
    let f = b.call(async { Ok::<u64, ()>(42) });
    eprintln!("call {}", std::mem::size_of_val(&f));
    eprintln!("result {}", std::mem::size_of::<Result<u64, Error<()>>>());
    let p = b.try_acquire().unwrap();
    eprintln!("permit {}", std::mem::size_of_val(&p));
    p.record(Outcome::Success);
}
