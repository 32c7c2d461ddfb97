fn main() {
    println!("loadgen: not built yet (see issue 4)");
}
