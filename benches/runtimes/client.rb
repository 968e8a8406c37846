# HTTPS keep-alive client for scripts/bench-runtimes.sh (Ruby's net/http, OpenSSL underneath).
#
# usage: ruby client.rb URL COUNT
#
# One connection, one warm-up request (the handshake), then COUNT timed POST requests whose
# 1 KiB body carries $BENCH once; prints "ns_per_request N". Trusts $SSL_CERT_FILE.
require 'net/http'
require 'openssl'

uri = URI(ARGV[0])
count = Integer(ARGV[1])
data = ('x' * 64) + ENV.fetch('BENCH', '')
payload = data + ('y' * (1024 - data.bytesize))
http = Net::HTTP.new(uri.host, uri.port)
http.use_ssl = true
http.ca_file = ENV['SSL_CERT_FILE'] if ENV['SSL_CERT_FILE']
http.start do |conn|
  request = -> { conn.request(Net::HTTP::Post.new(uri.path.empty? ? '/' : uri.path), payload).body }
  request.call
  start = Process.clock_gettime(Process::CLOCK_MONOTONIC, :nanosecond)
  count.times { request.call }
  puts "ns_per_request #{(Process.clock_gettime(Process::CLOCK_MONOTONIC, :nanosecond) - start) / count}"
end
