module kloak.bench/goclient

go 1.19
