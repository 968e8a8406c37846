module kloak-chart-render

// Built in GOPATH mode against Debian's packaged sources (no module download):
//   GO111MODULE=off GOPATH=/usr/share/gocode go build -o render .
// Packages: golang-go, golang-github-masterminds-sprig-dev (3.2.x),
// golang-gopkg-yaml.v2-dev, golang-gopkg-yaml.v3-dev. See ../README.md.

go 1.19
