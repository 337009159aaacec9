#!/usr/bin/perl
# An independent DKIM verifier that looks keys up in DNS: Perl's Mail::DKIM (Debian
# libmail-dkim-perl) with a Net::DNS resolver that asks only the given server.
#
#   perl dkim_verify_dns.pl HOST PORT < message.eml
#
# Prints one line per signature: <domain> <selector> <algorithm> <result> <detail>
use strict;
use warnings;
use Mail::DKIM::DNS;
use Mail::DKIM::Verifier;
use Net::DNS::Resolver;

my ($host, $port) = @ARGV;
die "usage: $0 HOST PORT < message\n" unless $host && $port;
my $resolver = Net::DNS::Resolver->new(
    nameservers => [$host], port => $port, recurse => 0, udp_timeout => 5, tcp_timeout => 5,
    retry => 1, defnames => 0, dnsrch => 0,
);
Mail::DKIM::DNS::resolver($resolver);

my $dkim = Mail::DKIM::Verifier->new;
binmode STDIN;
while (my $line = <STDIN>) {
    $line =~ s/\r?\n\z//;
    $dkim->PRINT("$line\015\012");
}
$dkim->CLOSE;
for my $signature ($dkim->signatures) {
    print join(' ', $signature->domain, $signature->selector, $signature->algorithm,
        $signature->result, $signature->result_detail // ''), "\n";
}
