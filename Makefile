# Daily commands. `sudo make demo` and `sudo make test` are the README's two set-up commands.
.PHONY: build demo test lint bench chart image clean

build:
	cargo build --release --locked

demo:
	scripts/demo.sh

test:
	scripts/test.sh

lint:
	cargo fmt --check
	cargo clippy --all-targets --locked -- -D warnings

chart:
	scripts/chart/check.sh --update

image:
	docker build -t kloak:dev .

bench:
	cargo bench --locked --bench secret_sync_latency
	cargo bench --locked --bench node_scale
	scripts/bench.sh

clean:
	cargo clean
