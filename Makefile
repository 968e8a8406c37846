# Daily commands. `sudo make demo` and `sudo make test` are the README's two set-up commands.
.PHONY: build demo test lint bench chart image docker-image clean

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

# The image without Docker: the release binary and its shared libraries as an OCI archive.
image:
	cargo build --release --locked --bin kloak
	scripts/k8s/image.sh target/image kloak

docker-image:
	docker build -t kloak:dev .

bench:
	cargo bench --locked --bench secret_sync_latency
	cargo bench --locked --bench node_scale
	scripts/bench.sh

clean:
	cargo clean
