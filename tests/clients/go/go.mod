module kloak.test/goclient

go 1.19
