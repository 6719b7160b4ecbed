#!/usr/bin/perl
# A level 3 SNPP gateway for the tests: Debian's Net::SNPP::Server
# (libnet-snpp-perl) on 127.0.0.1:PORT, with LOGIn, LEVEl and MSTAtus added
# as custom commands (the library has 2WAy and MCREsponse, not these).
# Each page taken is one line of JSON appended to SPOOL; MSTAtus answers
# with what STATUSDIR/<tag> holds, or that the page is queued.
use strict;
use warnings;
use IO::Handle;
use JSON::PP;
use Time::HiRes ();
use Net::SNPP::Server;

my ($port, $spool, $statusdir, $login, $password) = @ARGV;
die "usage: snpp-server.pl PORT SPOOL STATUSDIR LOGIN PASSWORD\n" unless defined $password;

my $server = Net::SNPP::Server->new(Port => $port, BindTo => '127.0.0.1', Timeout => 30, MaxErrors => 5);
my ($level, $user);
$server->custom_command('LOGI', sub {
    my ($l, $p) = @_;
    if (defined $l && $l eq $login && defined $p && $p eq $password) {
        $user = $l;
        return ("250 Login Accepted", 1);
    }
    return ("550 Error, Invalid Login", 1);
});
$server->custom_command('LEVE', sub {
    my ($n) = @_;
    return ("550 Error, Invalid Level", 1) unless defined $n && $n =~ /^\d+$/ && $n <= 11;
    $level = $n;
    return ("250 OK, Level Accepted", 1);
});
$server->custom_command('MSTA', sub {
    my ($tag) = @_;
    return ("550 Error, Invalid Message Tag", 1) unless defined $tag && $tag =~ /^\w+$/;
    if (open(my $fh, '<', "$statusdir/$tag")) {
        my $line = <$fh>;
        close $fh;
        chomp $line;
        return ($line, 1);
    }
    return ("960 $tag 0 OK, Message QUEUED for Delivery", 1);
});
$server->callback('process_page', sub {
    my ($pgr, $page, $results) = @_;
    return 0 unless defined $user;
    open(my $fh, '>>', $spool) or return 0;
    my %rec = (%$page, pager => $pgr->[0], pin => $pgr->[1], level => $level, login => $user, at => Time::HiRes::time());
    print $fh encode_json(\%rec), "\n";
    close $fh;
    return 1;
});
$server->callback('create_id_and_pin', sub { return (time() . int(rand(1000)), int(rand(1000000))) });
$server->callback('write_log', sub { });
STDOUT->autoflush(1);
print "ready\n";
while (my $client = $server->client()) {
    ($level, $user) = (undef, undef);
    $server->handle_client($client);
}
