#!/usr/bin/perl
# An independent DKIM verifier for the tests: Perl's Mail::DKIM (Debian libmail-dkim-perl).
#
#   perl dkim_verify.pl KEYS_FILE < message.eml
#
# KEYS_FILE has one "<selector>._domainkey.<domain><TAB><TXT record>" per line; DNS is never
# queried (Mail::DKIM::DNS::query is replaced). Prints one line per signature:
#   <domain> <selector> <algorithm> <result> <detail>
use strict;
use warnings;
use Mail::DKIM::Verifier;
use Net::DNS;

my %txt;
open my $keys, '<', $ARGV[0] or die "cannot read $ARGV[0]: $!\n";
while (my $line = <$keys>) {
    chomp $line;
    my ($name, $record) = split /\t/, $line, 2;
    $txt{lc $name} = $record;
}
close $keys;

{
    no warnings 'redefine';
    *Mail::DKIM::DNS::query = sub {
        my ($domain, $type) = @_;
        my $record = $txt{lc $domain};
        if (!defined $record || uc $type ne 'TXT') {
            $@ = 'NXDOMAIN';
            return;
        }
        $@ = 'NOERROR';
        my @strings = unpack '(a255)*', $record;
        return Net::DNS::RR->new(name => $domain, type => 'TXT', txtdata => \@strings);
    };
}

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
